import json

import pytest
import torch

from naslung.data.spec import CropSpec
from naslung.ensemble import BundleError, BundleMember, load_bundle, read_manifest, save_bundle

SPEC = CropSpec(size=16)


def _save(tmp_path, members, rule="mean", weights=None, **kw):
    bm = [BundleMember(cfg.name, cfg, m.state_dict(), metrics={"val": {"auc": 0.5 + i / 10}})
          for i, (cfg, m) in enumerate(members)]
    return save_bundle(tmp_path / "bundle", bm, SPEC, rule, weights,
                       training_data={"fingerprint": "abc123", "n": 48}, **kw)


def test_round_trip_reproduces_member_outputs(tmp_path, members, crops16):
    out = _save(tmp_path, members, rule="weighted", weights=[0.1, 0.2, 0.3, 0.2, 0.2])
    ens = load_bundle(out)
    assert ens.member_names == [c.name for c, _ in members]
    assert ens.spec == SPEC and ens.rule == "weighted"
    assert len(ens.version) == 12 and ens.version == ens.manifest["version"]
    ref = torch.stack([torch.softmax(m(crops16), 1) for _, m in members])
    got = ens.member_proba(crops16)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    expected = torch.einsum("m,mnc->nc", torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2]), ref)
    torch.testing.assert_close(ens.predict_proba(crops16), expected, rtol=0, atol=1e-6)


def test_manifest_records_everything_a_reader_needs(tmp_path, members):
    out = _save(tmp_path, members)
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "naslung-bundle" and man["format_version"] == 1
    assert man["crop_spec"] == SPEC.to_dict()
    assert man["input"]["normalization"]["hu_min"] == SPEC.hu_min
    assert man["rule"] == {"name": "mean", "weights": None}
    assert man["training_data"]["fingerprint"] == "abc123"
    for entry, (cfg, _) in zip(man["members"], members):
        assert entry["config"] == cfg.to_dict()
        assert len(entry["sha256"]) == 64 and entry["metrics"]["val"]["auc"] >= 0.5
        assert (out / entry["weights_file"]).read_bytes()[:8]  # safetensors header length
        assert entry["weights_file"].endswith(".safetensors")
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


def test_version_is_content_derived(tmp_path, members):
    a = read_manifest(_save(tmp_path / "a", members))["version"]
    b = read_manifest(_save(tmp_path / "b", members))["version"]
    c = read_manifest(_save(tmp_path / "c", members[:3]))["version"]
    assert a == b != c
    assert read_manifest(_save(tmp_path / "d", members, version="2026.11-rc1"))["version"] == "2026.11-rc1"


def test_tampered_weight_file_is_refused(tmp_path, members):
    out = _save(tmp_path, members)
    man = read_manifest(out)
    path = out / man["members"][2]["weights_file"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # flip one bit inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for members/02-c\.safetensors"):
        load_bundle(out)


def test_missing_weight_file_is_refused(tmp_path, members):
    out = _save(tmp_path, members)
    (out / read_manifest(out)["members"][0]["weights_file"]).unlink()
    with pytest.raises(BundleError, match="is missing"):
        load_bundle(out)


def test_edited_manifest_is_refused(tmp_path, members):
    out = _save(tmp_path, members)
    man = json.loads((out / "manifest.json").read_text())
    man["rule"] = {"name": "vote", "weights": None}
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="content_sha256"):
        load_bundle(out)


def test_path_escape_in_manifest_is_refused(tmp_path, members):
    from naslung.ensemble.bundle import manifest_sha256

    out = _save(tmp_path, members)
    man = json.loads((out / "manifest.json").read_text())
    man["members"][0]["weights_file"] = "../outside.safetensors"
    man["content_sha256"] = manifest_sha256(man)
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="invalid weights_file"):
        read_manifest(out)


def test_pickle_payload_is_not_loaded(tmp_path, members):
    """A weight file that is a pickle (e.g. torch.save) fails as unreadable, it is never unpickled."""
    from naslung.ensemble.bundle import manifest_sha256, sha256_file

    out = _save(tmp_path, members)
    man = json.loads((out / "manifest.json").read_text())
    rel = man["members"][0]["weights_file"]
    torch.save(members[0][1].state_dict(), out / rel)
    man["members"][0]["sha256"] = sha256_file(out / rel)  # an attacker who also fixes the hashes
    man["content_sha256"] = manifest_sha256(man)
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="cannot read"):
        load_bundle(out)


def test_not_a_bundle_and_refusals(tmp_path, members):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path / "empty")
    out = _save(tmp_path, members)
    with pytest.raises(BundleError, match="not empty"):
        _save(tmp_path, members)
    _save(tmp_path, members, overwrite=True)
    with pytest.raises(BundleError, match="needs weights"):
        save_bundle(tmp_path / "w", [BundleMember("a", members[0][0], members[0][1].state_dict())], SPEC,
                    "weighted")
    with pytest.raises(BundleError, match="expects 16"):
        save_bundle(tmp_path / "x", [BundleMember("a", members[0][0], members[0][1].state_dict())],
                    CropSpec(size=32))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    assert out.is_dir()


def test_ensemble_forward_keeps_gradients(tmp_path, members, crops16):
    ens = load_bundle(_save(tmp_path, members))
    x = crops16.clone().requires_grad_(True)
    ens(x)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
