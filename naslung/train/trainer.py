"""Training one fold: fit on the training folds, choose the checkpoint on the inner validation fold.

The test fold is never looked at while training: early stopping and checkpoint choice read only
the validation split (``split_fold``: validation = the next fold). Test predictions are made once,
with the chosen weights, at the end.

Imports stay light at module level (torch, numpy, naslung.models) so the benchmark runs where
only torch and numpy exist; scikit-learn and tqdm are imported when needed.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from naslung.models import build_model
from naslung.models.config import ModelConfig
from naslung.train.config import TrainConfig
from naslung.train.data import DeviceData

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    fold: int
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    state_dict: dict[str, torch.Tensor]      # chosen weights, on CPU
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    val_proba: np.ndarray                    # (n_val, 2)
    test_proba: np.ndarray | None            # (n_test, 2)
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    best_epoch: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        model = build_model(self.model_cfg)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


# ------------------------------------------------------------------ building blocks
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def make_augmenter(cfg: TrainConfig, seed: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if not cfg.augment:
        return None
    from naslung.data.augment import AugmentConfig, BatchAugmenter

    return BatchAugmenter(AugmentConfig(**cfg.augment_options), seed=seed)


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU bf16 convs are slow and change results)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def epoch_batches(train_idx: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                  class_balanced: bool) -> list[torch.Tensor]:
    """Index batches for one epoch (CPU generator -> same order on every device).

    A final batch of a single sample is dropped (BatchNorm cannot train on it).
    """
    n = len(train_idx)
    if class_balanced:
        y = labels[train_idx].cpu()
        counts = torch.bincount(y, minlength=2).clamp_min(1).float()
        weights = (1.0 / counts)[y]
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    idx = train_idx.cpu()[order]
    batches = list(idx.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


@dataclass
class StepTargets:
    """What one batch is trained towards besides ``y``: reader soft labels and auxiliary ratings."""

    soft: torch.Tensor | None = None   # (B,) P(malignant) from the readers, NaN = unknown
    soft_weight: float = 0.0
    aux: torch.Tensor | None = None    # (B, K) standardised ratings, NaN = unknown
    aux_weight: float = 0.0


def classification_loss(logits: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None = None,
                        soft_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy against the hard label, or against ``(1 - w) onehot(y) + w [1 - soft, soft]``
    (crops without a soft label keep the hard one)."""
    logits = logits.float()
    if soft is None or soft_weight <= 0:
        return F.cross_entropy(logits, y)
    hard = F.one_hot(y, logits.shape[1]).float()
    s = torch.where(torch.isnan(soft), y.float(), soft.float())
    target = (1 - soft_weight) * hard + soft_weight * torch.stack([1 - s, s], dim=1)
    return F.cross_entropy(logits, target)


def aux_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the known (non-NaN) entries; 0 when none is known."""
    known = ~torch.isnan(target)
    if not bool(known.any()):
        return pred.sum() * 0.0
    return F.mse_loss(pred.float()[known], target[known])


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, step: int,
               amp: bool = True, *, lam: float | None = None, targets: StepTargets | None = None,
               aux_head: nn.Module | None = None) -> tuple[float, int]:
    """One forward (margin logits) + backward + optimizer step; returns (loss, n correct).

    ``lam`` is the A-Softmax lambda for this step (None: the head's own per-step schedule).
    With ``targets``, soft labels mix into the target and ``aux_head`` regresses the ratings
    from the same embedding the classifier sees.
    """
    t = targets or StepTargets()
    with autocast_for(x.device, amp):
        emb = model.embed(x)
        if lam is None:
            logits = model.head.margin_logits(emb, y, step=step)
        else:
            logits = model.head.margin_logits(emb, y, lam=lam)
        loss = classification_loss(logits, y, t.soft, t.soft_weight)
        if aux_head is not None and t.aux is not None and t.aux_weight > 0:
            loss = loss + t.aux_weight * aux_loss(aux_head(emb.float()), t.aux)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 256, amp: bool = True) -> torch.Tensor:
    """(N, 2) probabilities of a normalised tensor, in eval mode, batched; returns float32 on x's device."""
    was = model.training
    model.eval()
    out = []
    for chunk in x.split(batch_size):
        with autocast_for(chunk.device, amp):
            out.append(model.predict_proba(chunk).float())
    model.train(was)
    if not out:
        return torch.zeros((0, 2), device=x.device)
    return torch.cat(out)


@torch.no_grad()
def predict_proba_tta(model: nn.Module, x: torch.Tensor, batch_size: int = 256, amp: bool = True) -> torch.Tensor:
    """:func:`predict_proba` averaged over the 8 flips of the three axes (test-time augmentation:
    the same flips the training augmentation draws, so each view is one the model has seen)."""
    total = None
    for mask in range(8):
        dims = [2 + a for a in range(3) if mask >> a & 1]
        p = predict_proba(model, x.flip(dims) if dims else x, batch_size, amp)
        total = p if total is None else total + p
    return total / 8


def _score(metrics: dict[str, Any], loss: float, select: str) -> tuple[float, ...]:
    """Larger is better. AUC ignores the threshold, so it is tie-broken by accuracy, then loss."""
    def v(key: str) -> float:
        x = metrics.get(key, math.nan)
        return -math.inf if x is None or math.isnan(x) else float(x)

    if select == "loss":
        return (-loss,)
    if select == "auc":
        return (v("auc"), v("accuracy"), -loss)
    return (v("accuracy"), v("auc"), -loss)


# ------------------------------------------------------------------ one split
ModelBuilder = Callable[[ModelConfig], nn.Module]


def train_on_split(data: DeviceData, model_cfg: ModelConfig, train_cfg: TrainConfig, train_idx, val_idx,
                   test_idx=None, *, fold: int = 0, progress: bool = True,
                   desc: str | None = None, build: ModelBuilder | None = None) -> FoldResult:
    """Train on ``train_idx``, pick the epoch by ``val_idx`` only, then predict ``test_idx`` once.

    ``build`` makes the network from ``model_cfg`` (default :func:`naslung.models.build_model`);
    peers (``bench/peers.py``) pass their own, with the same ``embed`` / ``head`` /
    ``predict_proba`` interface, so that they are trained by exactly this protocol.
    """
    from naslung.train.metrics import binary_metrics

    t0 = time.perf_counter()
    device = data.device
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx if test_idx is not None else [], dtype=np.int64)
    if len(train_idx) < 2 or len(val_idx) == 0:
        raise ValueError(f"fold {fold}: {len(train_idx)} training and {len(val_idx)} validation crops; need more")
    overlap = (set(train_idx.tolist()) & set(val_idx.tolist())) | \
              ((set(train_idx.tolist()) | set(val_idx.tolist())) & set(test_idx.tolist()))
    if overlap:
        raise ValueError(f"fold {fold}: train/validation/test overlap in {len(overlap)} crops")
    if model_cfg.in_size != data.spec.size:
        log.info("model config in_size %d differs from crop size %d (pooling is adaptive)",
                 model_cfg.in_size, data.spec.size)

    seed = train_cfg.seed * 1000 + fold
    seed_everything(seed)
    model = (build or build_model)(model_cfg).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    soft_all, aux_all, aux_head = _reader_targets(data, train_cfg, train_idx, model, device)
    opt = make_optimizer(nn.ModuleList([model, aux_head]) if aux_head is not None else model, train_cfg)
    sched = make_scheduler(opt, train_cfg)
    augment = make_augmenter(train_cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    amp = train_cfg.amp

    tr = torch.as_tensor(train_idx)
    x_val, y_val = data.x[torch.as_tensor(val_idx, device=device)], data.y[torch.as_tensor(val_idx, device=device)]
    y_val_np = y_val.cpu().numpy()

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": (-math.inf,) * 3, "epoch": 0, "state": None}
    step = 0
    bad_epochs = 0
    lam_schedule = _lambda_schedule(model, train_cfg, len(train_idx))
    epochs = range(1, train_cfg.epochs + 1)
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(epochs, desc=desc or f"fold {fold}", unit="ep", leave=True, dynamic_ncols=True)
            epochs = bar
        except ImportError:
            pass
    for epoch in epochs:
        te = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for bidx in epoch_batches(tr, data.y, train_cfg.batch_size, gen, train_cfg.class_balanced):
            bidx = bidx.to(device)
            x, y = data.x[bidx], data.y[bidx]
            if augment is not None:
                x = augment(x)
            targets = StepTargets(None if soft_all is None else soft_all[bidx], train_cfg.soft_labels,
                                  None if aux_all is None else aux_all[bidx], train_cfg.aux_weight)
            lam = lam_schedule(step) if lam_schedule is not None else None
            loss, ok = train_step(model, opt, x, y, step, amp, lam=lam, targets=targets, aux_head=aux_head)
            step += 1
            loss_sum += loss * len(bidx)
            correct += ok
            seen += len(bidx)
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        proba = predict_proba(model, x_val, train_cfg.eval_batch_size, amp)
        val_loss = float(F.nll_loss(proba.clamp_min(1e-7).log(), y_val))
        vm = binary_metrics(y_val_np, proba[:, 1].cpu().numpy())
        lam = lam_schedule(step) if lam_schedule is not None else None
        rec = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_loss": val_loss, "val_acc": vm["accuracy"], "val_auc": vm["auc"], "lr": lr,
               "lambda": lam, "seconds": time.perf_counter() - te}
        history.append(rec)
        score = _score(vm, val_loss, train_cfg.select_metric)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if bar is not None:
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}", val_auc=f"{vm['auc']:.3f}",
                            val_acc=f"{vm['accuracy']:.3f}", best=best["epoch"])
        log.debug("fold %d epoch %d %s", fold, epoch, rec)
        if train_cfg.patience and epoch >= train_cfg.min_epochs and bad_epochs >= train_cfg.patience:
            log.info("fold %d: early stop at epoch %d (best %d)", fold, epoch, best["epoch"])
            break
    if bar is not None:
        bar.close()

    model.load_state_dict(best["state"])
    val_proba = predict_proba(model, x_val, train_cfg.eval_batch_size, amp).cpu().numpy()
    val_metrics = binary_metrics(y_val_np, val_proba[:, 1])
    test_proba = test_metrics = None
    if len(test_idx):
        ti = torch.as_tensor(test_idx, device=device)
        test_proba = predict_proba(model, data.x[ti], train_cfg.eval_batch_size, amp).cpu().numpy()
        test_metrics = binary_metrics(data.y[ti].cpu().numpy(), test_proba[:, 1])
    extra: dict[str, Any] = {}
    if lam_schedule is not None:
        # The lambda the chosen weights were trained with, and the one training ended at.
        extra["lambda_at_best"] = history[best["epoch"] - 1]["lambda"]
        extra["lambda_final"] = history[-1]["lambda"]
        extra["asoftmax_m"] = int(model.head.m)
    return FoldResult(fold=fold, model_cfg=model_cfg, train_cfg=train_cfg, state_dict=best["state"],
                      val_metrics=val_metrics, test_metrics=test_metrics, history=history,
                      val_proba=val_proba, test_proba=test_proba, train_idx=train_idx, val_idx=val_idx,
                      test_idx=test_idx, best_epoch=best["epoch"], seconds=time.perf_counter() - t0,
                      extra=extra)


def _lambda_schedule(model: nn.Module, cfg: TrainConfig, n_train: int):
    """The A-Softmax lambda schedule over this run's planned steps (None for other heads)."""
    from naslung.models.heads import ASoftmaxHead, LambdaSchedule

    if not isinstance(getattr(model, "head", None), ASoftmaxHead):
        return None
    per_epoch = max(1, n_train // cfg.batch_size + (1 if n_train % cfg.batch_size >= 2 else 0))
    return LambdaSchedule(cfg.lambda_start, cfg.lambda_min, cfg.lambda_floor_at, per_epoch * cfg.epochs)


def _reader_targets(data: DeviceData, cfg: TrainConfig, train_idx: np.ndarray, model: nn.Module,
                    device: torch.device):
    """(soft labels (N,), standardised aux targets (N, K), aux head) on the device, each None when off."""
    if cfg.soft_labels <= 0 and cfg.aux_weight <= 0:
        return None, None, None
    from naslung.train.targets import ReaderTargets

    if not data.rows:
        raise ValueError("soft_labels / aux_weight need reader ratings: build DeviceData from a prepared "
                         "dataset whose manifest has them (naslung prepare --source voi or lidc-shapes)")
    readers = ReaderTargets.from_rows(data.rows, cfg.aux_targets)
    soft = aux = head = None
    if cfg.soft_labels > 0:
        readers.require_soft(data.y.cpu().numpy())
        soft = torch.as_tensor(readers.soft, device=device)
    if cfg.aux_weight > 0:
        aux = torch.as_tensor(readers.standardized_aux(train_idx), device=device)
        if torch.isnan(aux[torch.as_tensor(train_idx, device=device)]).all():
            raise ValueError(f"aux_weight > 0 but none of the aux targets {cfg.aux_targets} is known "
                             "for the training crops")
        head = nn.Linear(model.num_features, aux.shape[1]).to(device)
    return soft, aux, head


def train_fold(ds, model_cfg: ModelConfig, train_cfg: TrainConfig, fold: int, *, eval_test: bool = True,
               progress: bool = True, data: DeviceData | None = None,
               build: ModelBuilder | None = None) -> FoldResult:
    """Train outer fold ``fold`` of a prepared dataset with assigned folds.

    Train = all folds but ``fold`` and the next one; validation (early stopping, checkpoint
    choice) = the next fold; test = ``fold``, predicted once at the end when ``eval_test``.
    Pass ``data`` to reuse a dataset already on the device across folds.
    """
    from naslung.data.folds import split_fold

    split = split_fold(ds.folds, fold)
    if data is None:
        data = DeviceData.from_dataset(ds, train_cfg.resolved_device())
    return train_on_split(data, model_cfg, train_cfg, split.train, split.val,
                          split.test if eval_test else None, fold=fold, progress=progress, build=build)
