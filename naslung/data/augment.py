"""The paper's training augmentation, batched on whatever device the batch lives on.

NAS-Lung (after DeepLung) augments each 32³ crop with: a random crop after padding 4 voxels on each
side, a random flip on each of the three axes (p = 0.5 each), and zeroing out one random 4³ cube.
Here all of it runs on a whole batch at once with index arithmetic — one gather does crop + flips,
one broadcast mask does the zero-out — so it costs next to nothing on a GPU and needs no per-sample
Python loop. "Zero" means *background*: ``fill`` (default 0.0, which is air, -1000 HU, after
:meth:`CropSpec.normalize`; pass ``spec.pad_hu`` when augmenting HU tensors).

VOI-border guard (``border_jitter``): the lidc-voi crops end at the nodule's own bounding box, so
their -1000 HU padding border grows as the nodule shrinks and a model can learn the border instead
of the nodule (see ``shared/data/README.md``). With ``border_jitter = B > 0`` each sample, with
probability ``border_jitter_p``, gets a random slab of 0..B voxels on each of its six faces set to
background — a random erosion of its field of view — so the border's width varies inside every
class and stops being a clean size proxy. It does not remove the shortcut on its own: report it
together with a check on crops whose border was removed (manifest column ``fov_fraction``).

In-plane rotation (``rot90_p``): with this probability a sample is turned by a random multiple of
90 degrees in the (y, x) plane. Crops are isotropic and an axial nodule has no preferred in-plane
direction, so this quadruples the orientations the model sees; only in-plane turns are used so that
a field-of-view box that is thinner in z than in x, y (``prepare --fov-mm 24,24,6``) stays the same.

Randomness: every random number is drawn from ``generator`` (a CPU ``torch.Generator`` by default)
and then moved to the batch's device, so a seed gives the same augmentation on CPU and GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    pad: int = 4                 # random crop after padding this many voxels per side (0 = off)
    flip_p: float = 0.5          # probability of a flip, per axis
    zero_out: int = 4            # edge of the zeroed cube (0 = off)
    zero_out_p: float = 1.0      # probability a sample gets a zeroed cube (the paper: always)
    fill: float = 0.0            # background value for padding and zero-out (normalised air)
    border_jitter: int = 0       # VOI-border guard: max background slab per face (0 = off)
    border_jitter_p: float = 0.5
    rot90_p: float = 0.0         # probability of a random in-plane (y, x) quarter turn (0 = off)

    def __post_init__(self) -> None:
        for name in ("pad", "zero_out", "border_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment {name} must be >= 0, got {getattr(self, name)}")
        for name in ("flip_p", "zero_out_p", "border_jitter_p", "rot90_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} must be a probability, got {getattr(self, name)}")


def _rand(n: int, generator: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand((n, *shape), generator=generator, device=gdev).to(device)


def _randint(high: torch.Tensor | int, n: int, k: int, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    """Integers uniform in [0, high] (inclusive) of shape (n, k)."""
    u = _rand(n, generator, device, k)
    high_t = torch.as_tensor(high, device=device)
    return torch.minimum((u * (high_t + 1)).long(), high_t.long())


def augment_batch(x: torch.Tensor, cfg: AugmentConfig = AugmentConfig(),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch (N, C, D, H, W) or (N, D, H, W); returns a new tensor of the same shape,
    dtype and device. Deterministic for a seeded ``generator``."""
    squeeze = x.dim() == 4
    if squeeze:
        x = x.unsqueeze(1)
    if x.dim() != 5:
        raise ValueError(f"augment_batch needs (N, C, D, H, W) or (N, D, H, W), got shape {tuple(x.shape)}")
    n, c, d, h, w = x.shape
    dev = x.device
    dims = (d, h, w)
    if n == 0:
        return x.squeeze(1) if squeeze else x.clone()

    # --- random crop (after padding) + flips: one gather with per-sample index vectors
    p = cfg.pad
    offsets = _randint(2 * p, n, 3, generator, dev) if p > 0 else torch.full((n, 3), 0, device=dev, dtype=torch.long)
    flips = _rand(n, generator, dev, 3) < cfg.flip_p
    src = F.pad(x, (p,) * 6, value=cfg.fill) if p > 0 else x
    idx = []
    for a, size in enumerate(dims):
        base = torch.arange(size, device=dev).expand(n, size)
        rev = (size - 1) - base
        idx.append(offsets[:, a, None] + torch.where(flips[:, a, None], rev, base))  # (n, size)
    if p > 0 or cfg.flip_p > 0:
        bi = torch.arange(n, device=dev)[:, None, None, None]
        out = src[bi, :, idx[0][:, :, None, None], idx[1][:, None, :, None], idx[2][:, None, None, :]]
        out = out.permute(0, 4, 1, 2, 3)  # advanced indices first -> (n, d, h, w, c) -> (n, c, d, h, w)
    else:
        out = x.clone()

    # --- zero-out of a random k³ cube
    k = cfg.zero_out
    if k > 0 and cfg.zero_out_p > 0:
        kk = [min(k, s) for s in dims]
        corner = _randint(torch.tensor([s - q for s, q in zip(dims, kk)]), n, 3, generator, dev)
        on = _rand(n, generator, dev) < cfg.zero_out_p
        m = [(torch.arange(s, device=dev)[None] >= corner[:, a, None]) &
             (torch.arange(s, device=dev)[None] < corner[:, a, None] + kk[a]) for a, s in enumerate(dims)]
        cube = m[0][:, :, None, None] & m[1][:, None, :, None] & m[2][:, None, None, :] & on[:, None, None, None]
        out = out.masked_fill(cube[:, None], cfg.fill)

    # --- VOI-border guard: random background slabs on the six faces
    b = cfg.border_jitter
    if b > 0 and cfg.border_jitter_p > 0:
        t = _randint(b, n, 6, generator, dev)
        on = _rand(n, generator, dev) < cfg.border_jitter_p
        t = t * on[:, None]
        keep = [(torch.arange(s, device=dev)[None] >= t[:, 2 * a, None]) &
                (torch.arange(s, device=dev)[None] < s - t[:, 2 * a + 1, None]) for a, s in enumerate(dims)]
        inside = keep[0][:, :, None, None] & keep[1][:, None, :, None] & keep[2][:, None, None, :]
        out = out.masked_fill(~inside[:, None], cfg.fill)

    # --- in-plane quarter turns (only when the plane is square)
    if cfg.rot90_p > 0 and h == w:
        turns = _randint(3, n, 1, generator, dev)[:, 0] * (_rand(n, generator, dev) < cfg.rot90_p)
        for k in (1, 2, 3):
            sel = (turns == k).nonzero(as_tuple=True)[0]
            if len(sel):
                out[sel] = torch.rot90(out[sel], k, dims=(3, 4))

    out = out.contiguous()
    return out.squeeze(1) if squeeze else out


class BatchAugmenter:
    """:func:`augment_batch` with its own seeded generator: ``aug = BatchAugmenter(cfg, seed); x = aug(x)``."""

    def __init__(self, cfg: AugmentConfig = AugmentConfig(), seed: int = 0) -> None:
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return augment_batch(x, self.cfg, self.generator)
