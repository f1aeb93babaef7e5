#!/usr/bin/env python3
"""The peers, on exactly our folds, crops and protocol: MONAI's 3D ResNet-18 and DenseNet-121, and
logistic regression on the nodule diameter.

The MONAI networks are trained by NASLung's own trainer (``naslung.train.cv.seed_ensemble_cv``):
the same patient-grouped folds, the same validation fold for early stopping and checkpoint choice,
the same augmentation, epochs budget, optimiser and seeds as the CNN recipe they are compared
with. Only the network differs: MONAI's backbone (stock, as ``monai.networks.nets`` builds it)
feeding a plain softmax head. monai is a benchmark-only dependency: ``pip install --no-deps monai==1.6.1`` (the bench extra).

Example (GPU; figures in docs/results.md)::

    python bench/peers.py --data runs/voi5 --fov-mm 24,24,6 --peer resnet18 --epochs 100 \\
        --rot90 --seeds 0 1 2 --device cuda --out runs/peers/resnet18-fov
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from naslung.models.config import ModelConfig  # noqa: E402
from naslung.models.heads import SoftmaxHead  # noqa: E402

PEERS = ("resnet18", "densenet121")


class PeerNet(nn.Module):
    """A MONAI backbone (N, 1, D, H, W) -> (N, F) with our head: the interface our trainer, metrics
    and TTA use (``embed``, ``head``, ``num_features``, ``predict_proba``)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head = SoftmaxHead(num_features, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x).float(), dim=1)


def build_peer(name: str, num_classes: int = 2) -> PeerNet:
    """The stock MONAI network ``name`` (see PEERS) without its classifier, plus our softmax head."""
    from monai.networks import nets

    if name == "resnet18":
        return PeerNet(nets.resnet18(spatial_dims=3, n_input_channels=1, feed_forward=False), 512, num_classes)
    if name == "densenet121":
        net = nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=num_classes)
        net.class_layers.out = nn.Identity()
        return PeerNet(net, net.class_layers[-2].in_features if hasattr(net.class_layers[-2], "in_features")
                       else 1024, num_classes)
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def main(argv: list[str] | None = None) -> int:
    from real_data_cv import load_dataset, recipe_parser, report, train_config

    from naslung.models import count_params
    from naslung.train.cv import seed_ensemble_cv

    p = recipe_parser(__doc__)
    p.add_argument("--peer", required=True, choices=PEERS, help="MONAI network")
    args = p.parse_args(argv)
    ds = load_dataset(args)
    name = f"monai-{args.peer}"
    # The trainer keys checkpoints by a model config; this one only names the peer (softmax head).
    cfg = ModelConfig(stages=((1,),), head="softmax", cbam="none", in_size=ds.spec.size, name=name)
    build = lambda _cfg: build_peer(args.peer)  # noqa: E731
    n_params = count_params(build(cfg))
    tcfg = train_config(args)
    print(f"{args.data}: {len(ds)} crops; crops {ds.spec.describe()}; {name} ({n_params:,} params), seeds {args.seeds}")
    t0 = time.perf_counter()
    res = seed_ensemble_cv(ds, cfg, tcfg, args.seeds, out=None, progress=not args.no_progress, build=build,
                           tta=args.tta)
    return report(ds, args, name, n_params, {"peer": name, **dataclasses.asdict(cfg)}, tcfg, res,
                  time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
