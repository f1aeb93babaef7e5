"""From outside: `naslung predict` and `naslung explain` refuse cut, corrupt or wrong-shaped files (exit 1,
the file named, nothing written) instead of answering about zero-filled or resampled voxels."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from naslung.cli.main import main
from service_testutil import S, make_crop


def _scan(tmp_path):
    crop = make_crop(5, size=40)
    img = sitk.GetImageFromArray(crop)
    img.SetOrigin((-20.0, -20.0, -20.0))
    p = tmp_path / "scan.nii.gz"
    sitk.WriteImage(img, str(p))
    return p


@pytest.fixture
def target(start_server, predictor):
    server, _ = start_server(predictor)
    return f"127.0.0.1:{server.port}"


def test_predict_refuses_truncated_volume(target, tmp_path, capsys):
    p = _scan(tmp_path)
    assert main(["predict", "--server", target, "--input", str(p), "--world", "0", "0", "0"]) == 0
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    capsys.readouterr()
    assert main(["predict", "--server", target, "--input", str(p), "--world", "0", "0", "0"]) == 1
    cap = capsys.readouterr()
    assert f"naslung predict: error: {p}: is truncated" in cap.err
    assert "p_malignant" not in cap.out  # no answer at all


@pytest.mark.parametrize("shape", [(1, 1, 1), (S // 2,) * 3, (S * 3,) * 3, (S, S, S - 2)])
def test_predict_refuses_crop_of_the_wrong_shape(target, tmp_path, capsys, shape):
    p = tmp_path / "crop.npy"
    np.save(p, np.full(shape, -800, np.int16))
    assert main(["predict", "--server", target, "--input", str(p)]) == 1
    cap = capsys.readouterr()
    assert f"{p}: crop has shape {'x'.join(map(str, shape))}; the model takes {S}x{S}x{S}" in cap.err
    assert "p_malignant" not in cap.out


def test_predict_resamples_only_when_told_and_says_so(target, tmp_path, capsys):
    p = tmp_path / "crop.npy"
    np.save(p, make_crop(1, size=2 * S))
    assert main(["predict", "--server", target, "--input", str(p), "--spacing", "0.5", "0.5", "0.5"]) == 0
    cap = capsys.readouterr()
    assert "NOTE" in cap.err and f"resamples each crop to {S}x{S}x{S}" in cap.err
    assert "crop.npy" in cap.out


def test_predict_and_explain_name_a_garbage_npy_and_never_suggest_pickles(target, tiny_bundle, tmp_path, capsys):
    p = tmp_path / "crop.npy"
    p.write_bytes(b"\x80\x04\x95 not an array" * 50)
    assert main(["predict", "--server", target, "--input", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"{p}: is not a NumPy .npy file" in err and "pickle" not in err.lower()
    out = tmp_path / "expl"
    assert main(["explain", "--bundle", str(tiny_bundle), "--input", str(p), "--methods", "cbam",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{p}: is not a NumPy .npy file" in err and "pickle" not in err.lower()
    assert not out.exists()


def test_explain_refuses_truncated_volume_and_wrong_crop(tiny_bundle, tmp_path, capsys):
    p = _scan(tmp_path)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    out = tmp_path / "expl"
    assert main(["explain", "--bundle", str(tiny_bundle), "--input", str(p), "--world", "0", "0", "0",
                 "--methods", "cbam", "--out", str(out)]) == 1
    assert f"{p}: is truncated" in capsys.readouterr().err
    assert not out.exists()
    c = tmp_path / "c.npy"
    np.save(c, np.zeros((S, S, S - 2), np.int16))
    assert main(["explain", "--bundle", str(tiny_bundle), "--input", str(c), "--methods", "cbam",
                 "--out", str(out)]) == 1
    assert f"crop has shape {S}x{S}x{S - 2}" in capsys.readouterr().err
    assert not out.exists()
