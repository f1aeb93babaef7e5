"""x-folded convs (naslung/ensemble/fold.py) equal 3D convs: pure PyTorch, no Triton needed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from naslung.ensemble import fold


def _padded(x: torch.Tensor, x_border: int = 1) -> torch.Tensor:
    """(N, C, D, H, W) -> NDHWC with a one-voxel zero border in z/y and ``x_border`` in x."""
    return F.pad(x, (x_border, x_border, 1, 1, 1, 1)).permute(0, 2, 3, 4, 1).contiguous()


@pytest.mark.parametrize("cin,cout,k,stride,size,x_border", [
    (4, 4, 3, 1, (6, 6, 6), 1),
    (1, 8, 3, 2, (5, 6, 7), 1),
    (3, 5, 3, 2, (4, 4, 9), 1),
    (2, 1, 3, 1, (5, 4, 6), 0),  # CBAM's gate conv on the x-unpadded descriptor
    (2, 1, 7, 1, (5, 6, 7), 0),  # the original CBAM's 7x7x7 gate
    (2, 3, 5, 1, (6, 5, 4), 1),
])
def test_folded_conv_equals_conv3d(cin, cout, k, stride, size, x_border):
    g = torch.Generator().manual_seed(cin * 100 + cout * 10 + k)
    x = torch.randn(2, cin, *size, generator=g)
    w = torch.randn(cout, cin, k, k, k, generator=g)
    ref = F.conv3d(x, w, None, stride, k // 2).permute(0, 2, 3, 4, 1)
    fc = fold.pack_folded(w, None, stride, k // 2, torch.float32)
    got = fold.folded_conv(_padded(x, x_border), fc, x_border=x_border)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


def test_banded_weight_is_cached_per_width_and_border():
    fc = fold.pack_folded(torch.randn(4, 4, 3, 3, 3), torch.zeros(4), 1, 1, torch.float32)
    a = fc.banded(8)
    assert fc.banded(8) is a
    assert fc.banded(8, x_border=0) is not a and fc.banded(8, x_border=0).shape == (32, 32, 3, 3)
    assert a.shape == (32, 40, 3, 3)  # (Wo * COUT, (W + 2) * CIN, k, k)
    # a band: output x=0 sees only input x (padded) 0..2
    assert (a[:4, 12:] == 0).all() and (a[:4, :12] != 0).any()


def test_folded_conv_rejects_bad_input():
    with pytest.raises(ValueError, match="odd cubic kernel"):
        fold.pack_folded(torch.randn(4, 4, 2, 2, 2), None, 1, 1, torch.float32)
    with pytest.raises(ValueError, match="'same' padding"):
        fold.pack_folded(torch.randn(4, 4, 1, 1, 1), None, 1, 0, torch.float32)
    fc = fold.pack_folded(torch.randn(4, 4, 3, 3, 3), None, 1, 1, torch.float32)
    with pytest.raises(ValueError, match="expects 4 input channels"):
        fold.folded_conv(torch.zeros(1, 6, 6, 6, 3), fc)
