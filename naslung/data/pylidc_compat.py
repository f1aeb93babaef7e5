"""The one place that makes pylidc 0.2.3 importable and usable on current numpy / setuptools.

Why this module exists:

* pylidc 0.2.3 (the last release) still uses ``np.int``, ``np.float`` and ``np.bool`` inside
  ``Annotation.boolean_mask``, ``Contour.to_matrix`` and ``utils.consensus``. Those aliases were
  removed in numpy 1.24, so the *import* works but the first mask computation raises
  ``AttributeError``. We add the aliases (as the builtins they always were) **only when they are
  missing**, and touch nothing else in numpy. (numpy 2 reintroduced ``np.bool`` as ``np.bool_``,
  which works for pylidc's ``dtype=np.bool``, so there only ``np.int``/``np.float`` get added.) The aliases stay for the life of the process
  because pylidc looks them up lazily at call time, not at import.
* ``pylidc/__init__.py`` locates its bundled sqlite DB with ``pkg_resources`` (setuptools < 81 is
  pinned for that). Importing ``pkg_resources`` emits a deprecation ``UserWarning``; pylidc's
  import also triggers SQLAlchemy's ``MovedIn20Warning`` and SciPy's ``scipy.ndimage.morphology``
  ``DeprecationWarning``. These concern pylidc's own code, not ours, so they are silenced **only
  for the duration of the import** (``warnings.catch_warnings``); the global filters are unchanged.

Everything else in NASLung gets pylidc through :func:`import_pylidc`.
"""
from __future__ import annotations

import importlib
import logging
import sys
import warnings
from types import ModuleType

import numpy as np

log = logging.getLogger(__name__)

#: The numpy aliases pylidc 0.2.3 uses, and the builtins they meant before numpy 1.24.
NUMPY_ALIASES: dict[str, type] = {"int": int, "float": float, "bool": bool}

PYLIDC_VERSION = "0.2.3"


class PylidcUnavailable(ImportError):
    """pylidc (or one of its dependencies) could not be imported."""


def ensure_numpy_aliases() -> list[str]:
    """Add the removed numpy aliases that pylidc needs, only where missing; returns the names added."""
    added = []
    for name, typ in NUMPY_ALIASES.items():
        # ``hasattr`` on numpy >= 1.24 raises nothing for these names but returns False (numpy's
        # module __getattr__ raises AttributeError with a migration hint).
        if not hasattr(np, name):
            setattr(np, name, typ)
            added.append(name)
    if added:
        log.debug("added numpy aliases for pylidc: %s", ", ".join(f"np.{a}" for a in added))
    return added


def import_pylidc() -> ModuleType:
    """Return the ``pylidc`` module, patched to run on this numpy, importing it quietly if needed."""
    ensure_numpy_aliases()
    if "pylidc" in sys.modules:
        return sys.modules["pylidc"]
    with warnings.catch_warnings():
        # pkg_resources deprecation (UserWarning), SQLAlchemy 2.0 moves, scipy.ndimage.morphology.
        warnings.filterwarnings("ignore", message=r".*pkg_resources is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*declarative_base\(\).*")
        warnings.filterwarnings("ignore", message=r".*scipy\.ndimage\.morphology.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pylidc(\..*)?")
        try:
            pl = importlib.import_module("pylidc")
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise PylidcUnavailable(
                f"pylidc could not be imported ({e}); the LIDC routes need pylidc=={PYLIDC_VERSION} "
                "and setuptools<81 (for pkg_resources)") from e
    if getattr(pl, "__version__", None) != PYLIDC_VERSION:
        log.warning("pylidc %s found; NASLung was written against %s",
                    getattr(pl, "__version__", "?"), PYLIDC_VERSION)
    return pl


def consensus(anns, clevel: float = 0.5, pad=None):
    """``pylidc.utils.consensus`` (imported through the compat layer); returns (mask, bbox slices)."""
    import_pylidc()
    from pylidc.utils import consensus as _consensus

    mask, bbox = _consensus(anns, clevel=clevel, pad=pad, ret_masks=False)
    return mask, bbox
