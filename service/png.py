"""A dependency-free PNG of a 3-D map: axial | coronal | sagittal central slices over the crop."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_rgb(img: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def central_slices_png(values: np.ndarray, base: np.ndarray | None = None, scale: int = 4) -> bytes:
    """Three central slices (z, y, x planes) of ``values`` in [0, 1] as a red overlay on ``base`` in [0, 1]."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0, 1)
    b = np.zeros_like(v) if base is None else np.clip(np.asarray(base, dtype=np.float32), 0, 1)
    z, y, x = (s // 2 for s in v.shape)
    panels = []
    for i, (vs, bs) in enumerate(((v[z], b[z]), (v[:, y, :], b[:, y, :]), (v[:, :, x], b[:, :, x]))):
        if i:  # coronal and sagittal: put +z (superior) at the top
            vs, bs = vs[::-1], bs[::-1]
        rgb = np.stack([bs * (1 - vs) + vs, bs * (1 - vs), bs * (1 - vs)], axis=-1)
        panels.append(np.kron(rgb, np.ones((scale, scale, 1), dtype=np.float32)))
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 2), (0, 0))) for p in panels]
    return encode_rgb((np.concatenate(panels, axis=1) * 255).round().astype(np.uint8))
