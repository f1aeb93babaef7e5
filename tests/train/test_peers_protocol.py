"""bench/peers.py: a foreign backbone goes through exactly our CV protocol (same folds, same
trainer, seeds averaged, flip TTA), via the injectable model builder."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from naslung.models.config import ModelConfig
from naslung.train import TrainConfig
from naslung.train.cv import seed_ensemble_cv

ROOT = Path(__file__).resolve().parents[2]


def _peers_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("peers", ROOT / "bench" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peer_adapter_trains_on_our_folds(tiny_dataset):
    peers = _peers_module()
    def build(_cfg):
        backbone = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
        return peers.PeerNet(backbone, 4)

    cfg = ModelConfig(stages=((1,),), head="softmax", cbam="none", in_size=16, name="peer")
    tcfg = TrainConfig(epochs=2, batch_size=8, patience=0, device="cpu")
    res = seed_ensemble_cv(tiny_dataset, cfg, tcfg, seeds=(0, 1), progress=False, build=build, tta=True)
    assert len(res["single"]) == 2 and res["ensemble"]["pooled"]["n"] == len(tiny_dataset)
    assert len(res["ensemble"]["per_fold"]) == int(tiny_dataset.folds.max()) + 1
    p = np.array([res["proba"][i] for i in range(len(tiny_dataset))])
    assert ((p >= 0) & (p <= 1)).all()
    assert res["ensemble_tta"] is not None and res["proba_tta"] is not None
    net = build(cfg)
    assert net.predict_proba(torch.rand(2, 1, 16, 16, 16)).shape == (2, 2)
