"""pylidc 0.2.3 on numpy >= 1.24 via naslung.data.pylidc_compat."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np

from naslung.data.pylidc_compat import consensus, ensure_numpy_aliases, import_pylidc


def test_aliases_only_added_when_missing(monkeypatch):
    # A pre-existing attribute must be left exactly as it is.
    sentinel = object()
    monkeypatch.setattr(np, "int", sentinel, raising=False)
    added = ensure_numpy_aliases()
    assert "int" not in added and np.int is sentinel
    for name in ("float", "bool"):
        # numpy 2 brought ``np.bool`` back (as ``np.bool_``); either way pylidc's use as a dtype works.
        assert np.zeros(2, dtype=getattr(np, name)).dtype.kind in "fb"
    monkeypatch.undo()          # may delete np.int again if it was missing before ...
    ensure_numpy_aliases()      # ... so leave the process as import_pylidc would
    assert np.int is int


def test_fresh_interpreter_import_is_quiet_and_patches_only_aliases():
    # In a clean process: numpy lacks the aliases, import_pylidc adds exactly them, no warning escapes,
    # and the global warning filters are unchanged afterwards.
    code = (
        "import warnings, numpy as np\n"
        "before = {a: hasattr(np, a) for a in ('int','float','bool')}\n"
        "filters = list(warnings.filters)\n"
        "warnings.simplefilter('error')\n"
        "filters = list(warnings.filters)\n"
        "from naslung.data.pylidc_compat import import_pylidc\n"
        "pl = import_pylidc()\n"
        "assert list(warnings.filters) == filters, 'warning filters changed'\n"
        "assert np.int is int and np.float is float and np.zeros(1, np.bool).dtype == bool\n"
        "print(before, pl.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "0.2.3" in out.stdout
    if np.lib.NumpyVersion(np.__version__) >= "1.24.0":
        assert "'int': False, 'float': False" in out.stdout


def test_db_query_counts():
    pl = import_pylidc()
    assert pl.query(pl.Scan).count() == 1018
    assert pl.query(pl.Annotation).count() == 6859


def test_functions_using_removed_aliases_run():
    pl = import_pylidc()
    ann = pl.query(pl.Annotation).filter(pl.Annotation.id == 1).first()
    mask = ann.boolean_mask()                      # uses np.bool and np.int
    assert mask.dtype == bool and mask.sum() > 0
    m = ann.contours[0].to_matrix()                # uses np.int
    assert m.shape[1] == 3
    anns = ann.scan.cluster_annotations(verbose=False)[0]
    cmask, bbox = consensus(anns, clevel=0.5)
    assert cmask.any() and len(bbox) == 3
    # The consensus lies inside the union of the readers' masks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        union = np.any([a.boolean_mask(bbox=np.array([[s.start, s.stop - 1] for s in bbox])) for a in anns], axis=0)
    assert not (cmask & ~union).any()
