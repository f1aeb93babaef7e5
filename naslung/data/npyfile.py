"""Reading ``.npy`` arrays that a person hands us (crops for predict / explain), with errors that name the file.

``np.load`` on a file that is not an ``.npy`` says "Cannot load file containing pickled data when
allow_pickle=False" -- advice to load pickles, which we never want to give (a pickle runs code). A cut
``.npy`` gives a reshape error that names nothing. :func:`load_npy` checks the header and the byte
count first and raises :class:`NpyFileError` (a ``ValueError``) saying which file and what is wrong.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class NpyFileError(ValueError):
    """An ``.npy`` file is missing, not an ``.npy``, cut short, or holds something other than numbers."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


def load_npy(path: str | Path, *, mmap: bool = False) -> np.ndarray:
    """A numeric array from an ``.npy`` file, or :class:`NpyFileError`; object arrays are never loaded."""
    p = Path(path)
    if not p.is_file():
        raise NpyFileError(p, "file not found" if not p.exists() else "is not a regular file")
    try:
        with open(p, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise NpyFileError(p, "is not a NumPy .npy file (it does not start with the .npy header); "
                                      "give an array saved with numpy.save") from None
            try:
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)  # 3.0 differs only in the header's encoding
                shape, _fortran, dtype = read(f)
            except (ValueError, SyntaxError) as e:
                raise NpyFileError(p, f"has a damaged .npy header ({e})") from None
            offset = f.tell()
    except OSError as e:
        raise NpyFileError(p, f"cannot be read ({e.strerror or e})") from None
    if dtype.hasobject or dtype.kind not in "iuf":
        raise NpyFileError(p, f"holds {dtype} values; a numeric array (HU) is needed")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = p.stat().st_size - offset
    if have < need:
        raise NpyFileError(p, f"is truncated: its header promises a {shape} {dtype} array ({need} bytes), "
                              f"the file holds {have} bytes after the header")
    if have > need:
        raise NpyFileError(p, f"has {have - need} unexpected bytes after its {shape} {dtype} array "
                              f"(not a single numpy.save array?)")
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise NpyFileError(p, f"cannot be read as an array ({e})") from None


def check_crop_shape(arr: np.ndarray, expected: tuple[int, ...], source: str | Path, *,
                     stack: bool = False, hint: str = "") -> None:
    """Refuse a crop (or, with ``stack``, a stack of crops) whose voxel grid is not ``expected``.

    A crop of another shape would be resampled or padded silently into something the model was never
    trained on; the message says what was found, what the model takes and how to proceed.
    """
    shape = tuple(arr.shape[1:] if stack and arr.ndim == len(expected) + 1 else arr.shape)
    if shape != tuple(expected):
        what = "crops have" if stack and arr.ndim == len(expected) + 1 and len(arr) > 1 else "crop has"
        raise NpyFileError(source, f"{what} shape {'x'.join(map(str, shape))}; the model takes "
                                   f"{'x'.join(map(str, expected))} voxels. Prepare crops at the model's size "
                                   f"(naslung prepare), or give the CT volume with --world{hint}")
