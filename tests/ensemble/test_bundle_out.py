"""`naslung ensemble` refuses an existing --out before it trains; bundles get a plain directory's mode."""
from __future__ import annotations

import os
import stat


from naslung.cli.main import main


def test_existing_out_is_refused_before_anything_is_loaded_or_trained(tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # --data does not even exist: the --out check must come first, so no training time is lost
    rc = main(["ensemble", "--models", "tiny", "--data", str(tmp_path / "no-such-data"), "--epochs", "1",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and f"--out {out} already exists and is not empty" in err and "--force" in err
    assert "no-such-data" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bundle_directory_has_the_mode_mkdir_gives(tmp_path):
    from naslung.data.spec import CropSpec
    from naslung.ensemble import BundleMember, save_bundle
    from naslung.models import build_model, get_config

    cfg = get_config("tiny")
    out = save_bundle(tmp_path / "b", [BundleMember(name="m", config=cfg, state_dict=build_model(cfg).state_dict())],
                      CropSpec(size=16), rule="mean")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # 0755 under the usual umask, not mkdtemp's 0700
    (tmp_path / "plain").mkdir()
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
