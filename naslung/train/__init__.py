"""naslung.train: one-fold training, patient-grouped cross-validation, metrics, checkpoints.

Public API::

    TrainConfig                                   hyper-parameters (dataclass)
    train_fold(ds, model_cfg, train_cfg, fold)    -> FoldResult
    cross_validate(ds, model_cfg, train_cfg, folds=None, out=None) -> CVResult
    naslung.train.metrics.binary_metrics(y, p)    accuracy, sensitivity, specificity, f1, auc, n
    naslung.train.checkpoint.save_checkpoint / load_checkpoint

Only torch, numpy and naslung.models are imported here; scikit-learn, tqdm and safetensors are
imported by the functions that need them.
"""
from naslung.train.config import TrainConfig
from naslung.train.cv import CVResult, cross_validate
from naslung.train.data import DeviceData
from naslung.train.trainer import FoldResult, predict_proba, train_fold, train_on_split

__all__ = ["TrainConfig", "train_fold", "train_on_split", "cross_validate", "FoldResult", "CVResult",
           "DeviceData", "predict_proba"]
