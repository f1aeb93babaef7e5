"""`make test` must not write into the user's ~/nni-experiments registry (tests/conftest.py moves HOME)."""
from __future__ import annotations

import os
from pathlib import Path


def test_nni_registry_is_not_the_users():
    real = Path(os.environ["NASLUNG_TEST_REAL_HOME"]).resolve()
    assert Path.home().resolve() != real
    from nni.tools.nnictl.constants import NNI_HOME_DIR  # the registry nnictl and the manager use

    assert not Path(NNI_HOME_DIR).resolve().is_relative_to(real)
    assert Path(NNI_HOME_DIR).resolve().is_relative_to(Path.home().resolve())
