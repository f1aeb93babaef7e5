"""Maps: shapes, ranges, names, layers, hooks, ensemble combination, and input checking."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from naslung.explain import AttributionMap, combine, explain, explain_crop, normalise
from naslung.explain.methods import LogOdds, cbam_maps, last_stage, spatial_gates
from naslung.models import build_model
from naslung.models.config import ModelConfig

from naslung.data.spec import CropSpec

SPEC16 = CropSpec(size=16)

FAST = dict(ig_steps=4, occlusion_window=8, occlusion_stride=8)


def test_normalise_modes():
    raw = np.array([-2.0, 0.0, 1.0, 4.0])
    v, lo, hi = normalise(raw, "positive")
    assert (lo, hi) == (-2.0, 4.0)
    np.testing.assert_allclose(v, [0, 0, 0.25, 1])
    np.testing.assert_allclose(normalise(raw, "abs")[0], [0.5, 0, 0.25, 1])
    np.testing.assert_allclose(normalise(raw, "minmax")[0], [0, 1 / 3, 0.5, 1])
    assert v.dtype == np.float32
    # nothing positive -> an all-zero map, never NaN
    assert not normalise(-np.ones(5), "positive")[0].any()
    assert not normalise(np.full(5, 0.5), "minmax")[0].any()
    # percentile clipping saturates the top instead of letting one voxel flatten the rest
    spiky = np.r_[np.ones(99), 1000.0]
    assert normalise(spiky, "positive", clip_percentile=90)[0][:99].min() == 1.0
    with pytest.raises(ValueError, match="sign"):
        normalise(raw, "square")


def test_combine_is_weighted_mean_rescaled():
    a = AttributionMap("ig", "input", np.array([1.0, 0.0, 0.5], np.float32), member="a")
    b = AttributionMap("ig", "input", np.array([0.0, 1.0, 0.5], np.float32), member="b")
    c = combine([a, b], [3, 1])
    np.testing.assert_allclose(c.values, [1.0, 1 / 3, 2 / 3], rtol=1e-6)
    assert c.member is None and c.info["combined_from"] == ["a", "b"] and c.info["weights"] == [0.75, 0.25]
    with pytest.raises(ValueError, match="cannot combine"):
        combine([a, AttributionMap("gradcam", "stages.1", a.values)], [1, 1])
    with pytest.raises(ValueError, match="weights"):
        combine([a, b], [1])


def test_log_odds_wrapper_matches_softmax():
    z = torch.tensor([[2.0, -1.0], [0.3, 0.4]])
    out = LogOdds(lambda x: x)(z)
    p = torch.softmax(z, 1)
    torch.testing.assert_close(out, torch.log(p / (1 - p)))


def test_single_model_all_methods(tiny_model, blob_crop):
    e = explain(tiny_model, blob_crop, SPEC16, **FAST)
    keys = [m.key for m in e.maps]
    # one CBAM map per CBAM resolution: stem (16^3), stage1 (8^3), stage2 (4^3)
    assert keys == ["cbam_stem", "cbam_stage1", "cbam_stage2", "gradcam", "ig", "occlusion"]
    assert [m.layer for m in e.maps[:4]] == ["stem", "stage1", "stage2", "stages.1"]
    assert e.maps[0].info["resolution"] == [16, 16, 16] and e.maps[2].info["resolution"] == [4, 4, 4]
    for m in e.maps:
        assert m.values.shape == (16, 16, 16) and m.values.dtype == np.float32
        assert 0.0 <= m.values.min() and m.values.max() <= 1.0
        assert m.values.max() == pytest.approx(1.0)  # normalised, and not empty for this crop
        assert m.member is None and m.target == e.target
    # the prediction is the model's own
    with torch.no_grad():
        p = tiny_model.predict_proba(torch.from_numpy(SPEC16.normalize(blob_crop))[None, None])[0].numpy()
    np.testing.assert_allclose(e.proba, p, rtol=1e-5)
    assert e.target == int(np.argmax(p))
    # the agreed interface returns the same maps
    maps = explain_crop(tiny_model, blob_crop, SPEC16, methods=("cbam",))
    np.testing.assert_array_equal(maps[0].values, e.maps[0].values)


def test_cbam_hooks_read_gate_outputs_and_leave_no_hooks(tiny_model, blob_crop):
    gates = spatial_gates(tiny_model)
    assert [n for n, _ in gates] == ["stem.2.spatial_gate", "stages.0.2.spatial_gate", "stages.1.2.spatial_gate"]
    seen = {}
    for name, g in gates:
        g.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o.detach()))
    x = torch.from_numpy(SPEC16.normalize(blob_crop))[None, None]
    raws = cbam_maps(tiny_model, x)
    # stem gate is already at crop resolution: the raw map is exactly the gate output
    np.testing.assert_allclose(raws[0].values, seen["stem.2.spatial_gate"][0, 0].numpy(), rtol=1e-6)
    assert raws[0].values.min() >= 0 and raws[0].values.max() <= 1  # sigmoid gate
    for _, g in gates:  # cbam_maps removed its own hooks; only ours remain
        assert len(g._forward_hooks) == 1


def test_model_without_cbam_gives_no_cbam_maps(blob_crop, caplog):
    model = build_model(ModelConfig(stages=((4,), (8,)), cbam="none", in_size=16)).eval()
    with caplog.at_level(logging.WARNING):
        e = explain(model, blob_crop, SPEC16, ["cbam", "gradcam"])
    assert [m.method for m in e.maps] == ["gradcam"]
    assert "no CBAM" in caplog.text


def test_gradcam_layer_choice(tiny_model, blob_crop):
    assert last_stage(tiny_model)[0] == "stages.1"
    e = explain(tiny_model, blob_crop, SPEC16, ["gradcam"], gradcam_layer="stages.0")
    assert e.maps[0].layer == "stages.0" and e.maps[0].info["resolution"] == [8, 8, 8]
    with pytest.raises(ValueError, match="not a module"):
        explain(tiny_model, blob_crop, SPEC16, ["gradcam"], gradcam_layer="nope")


def test_target_class_changes_the_maps(tiny_model, blob_crop):
    a = explain(tiny_model, blob_crop, SPEC16, ["ig"], target=0, ig_steps=4).maps[0]
    b = explain(tiny_model, blob_crop, SPEC16, ["ig"], target=1, ig_steps=4).maps[0]
    assert a.target == 0 and b.target == 1
    # log-odds of class 0 = -log-odds of class 1: positive evidence for one is negative for the other
    assert not np.allclose(a.values, b.values)
    assert (np.minimum(a.values, b.values) < 1e-6).mean() > 0.95


def test_ensemble_maps_are_weighted_like_the_prediction(tiny_bundle, blob_crop):
    from naslung.ensemble import load_bundle

    ens = load_bundle(tiny_bundle)
    e = explain(ens, blob_crop, SPEC16, ["cbam", "ig"], ig_steps=4)
    assert e.member_weights == {"tiny-0": 0.75, "tiny-1": 0.25}
    assert set(e.member_proba) == {"tiny-0", "tiny-1"}
    x = torch.from_numpy(SPEC16.normalize(blob_crop))[None, None]
    np.testing.assert_allclose(e.proba, ens.predict_proba(x)[0].numpy(), rtol=1e-5)
    assert len(e.member_maps) == 2 * len(e.maps)
    for m in e.maps:
        parts = [p for p in e.member_maps if p.key.startswith(m.key + "_")]
        assert [p.member for p in parts] == ["tiny-0", "tiny-1"]
        expect = 0.75 * parts[0].values + 0.25 * parts[1].values
        np.testing.assert_allclose(m.values, expect / expect.max(), rtol=1e-5, atol=1e-6)
        assert m.member is None and m.info["weights"] == [0.75, 0.25]


def test_bad_inputs(tiny_model, blob_crop):
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain(tiny_model, blob_crop, SPEC16, ["lime"])
    with pytest.raises(ValueError, match="crop spec expects"):
        explain(tiny_model, blob_crop[:8], SPEC16, ["cbam"])
    with pytest.raises(ValueError, match="target class"):
        explain(tiny_model, blob_crop, SPEC16, ["cbam"], target=3)
