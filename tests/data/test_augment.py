"""Batched augmentation: exact flips, crops that are real shifted windows, one k³ zeroed cube, seeds."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from naslung.data.augment import AugmentConfig, BatchAugmenter, augment_batch

S = 12
OFF = dict(pad=0, flip_p=0.0, zero_out=0)


def _unique_batch(n: int = 6, c: int = 1) -> torch.Tensor:
    # every voxel distinct and non-zero, so any misplaced index is visible
    return torch.arange(1, n * c * S ** 3 + 1, dtype=torch.float32).reshape(n, c, S, S, S)


def test_shape_dtype_device_kept():
    x = _unique_batch(5, 2)
    y = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    x4 = x[:, 0]
    assert augment_batch(x4, AugmentConfig(), torch.Generator().manual_seed(0)).shape == x4.shape
    assert augment_batch(x[:0]).shape == x[:0].shape
    with pytest.raises(ValueError, match="shape"):
        augment_batch(torch.zeros(2, 3))


def test_identity_when_everything_is_off():
    x = _unique_batch()
    torch.testing.assert_close(augment_batch(x, AugmentConfig(**OFF)), x)


def test_flips_are_exact_flips():
    x = _unique_batch(2, 2)
    y = augment_batch(x, AugmentConfig(pad=0, flip_p=1.0, zero_out=0))
    torch.testing.assert_close(y, torch.flip(x, dims=(2, 3, 4)))


def test_each_sample_gets_its_own_flips():
    x = _unique_batch(64)
    y = augment_batch(x, AugmentConfig(pad=0, flip_p=0.5, zero_out=0), torch.Generator().manual_seed(3))
    seen = set()
    for i in range(len(x)):
        matches = [dims for r in range(4) for dims in itertools.combinations((1, 2, 3), r)
                   if torch.equal(y[i], torch.flip(x[i], dims=dims) if dims else x[i])]
        assert len(matches) == 1, "output is not a flip of its own input"
        seen.add(matches[0])
    assert len(seen) >= 6  # all 8 combinations are possible; 64 samples should show most


def test_random_crop_is_a_window_of_the_padded_input():
    p = 4
    x = _unique_batch(8)
    y = augment_batch(x, AugmentConfig(pad=p, flip_p=0.0, zero_out=0), torch.Generator().manual_seed(1))
    padded = F.pad(x, (p,) * 6, value=0.0)
    offsets = set()
    for i in range(len(x)):
        hits = [o for o in itertools.product(range(2 * p + 1), repeat=3)
                if torch.equal(y[i], padded[i, :, o[0]:o[0] + S, o[1]:o[1] + S, o[2]:o[2] + S])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets differ between samples


def test_zero_out_sets_one_cube_to_background():
    x = torch.ones(10, 1, S, S, S)
    y = augment_batch(x, AugmentConfig(pad=0, flip_p=0.0, zero_out=4, fill=-1.0), torch.Generator().manual_seed(2))
    for i in range(len(x)):
        z = (y[i, 0] == -1.0).nonzero()
        assert len(z) == 64
        assert ((z.max(0).values - z.min(0).values) == 3).all()  # a 4x4x4 block
        assert ((y[i] == 1.0) | (y[i] == -1.0)).all()


def test_zero_out_probability_zero_leaves_input():
    x = torch.ones(4, 1, S, S, S)
    y = augment_batch(x, AugmentConfig(pad=0, flip_p=0.0, zero_out=4, zero_out_p=0.0))
    torch.testing.assert_close(y, x)


def test_border_jitter_erodes_the_field_of_view_to_a_box():
    x = torch.ones(32, 1, S, S, S)
    cfg = AugmentConfig(pad=0, flip_p=0.0, zero_out=0, border_jitter=3, border_jitter_p=1.0)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(4))
    eroded = 0
    for i in range(len(x)):
        kept = (y[i, 0] == 1.0).nonzero()
        lo, hi = kept.min(0).values, kept.max(0).values
        assert (lo <= 3).all() and (hi >= S - 4).all()
        box = (hi - lo + 1).prod().item()
        assert box == len(kept)  # what is kept is exactly one axis-aligned box
        eroded += box < S ** 3
    assert eroded > 20


def test_deterministic_given_a_seed_and_different_across_seeds():
    x = _unique_batch(6)
    cfg = AugmentConfig(border_jitter=2)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    aug = BatchAugmenter(cfg, seed=7)
    torch.testing.assert_close(aug(x), a)
    assert not torch.equal(aug(x), a)  # the generator advances between calls


def test_input_is_not_modified():
    x = _unique_batch(3)
    before = x.clone()
    augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, before)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ValueError, match="pad"):
        AugmentConfig(pad=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_seed():
    x = _unique_batch(4)
    cpu = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(5))
    gpu = augment_batch(x.cuda(), AugmentConfig(), torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_rot90_turns_in_plane_only_and_is_seeded():
    import torch

    from naslung.data.augment import AugmentConfig, augment_batch

    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4, 4)
    cfg = AugmentConfig(pad=0, flip_p=0.0, zero_out=0, rot90_p=1.0)
    seen = set()
    for seed in range(12):
        out = augment_batch(x, cfg, torch.Generator().manual_seed(seed))
        for i in range(2):
            k = [k for k in range(4) if torch.equal(out[i], torch.rot90(x[i], k, dims=(2, 3)))]
            assert len(k) == 1  # exactly one in-plane quarter turn; z untouched
            seen.add(k[0])
    assert seen == {0, 1, 2, 3}
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, augment_batch(x, cfg, torch.Generator().manual_seed(3)))
    off = augment_batch(x, AugmentConfig(pad=0, flip_p=0.0, zero_out=0), torch.Generator().manual_seed(3))
    assert torch.equal(off, x)
