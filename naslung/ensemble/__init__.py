"""Ensembles: checksummed bundles, combination rules, member selection and a fast inference engine.

Only light modules are imported here (no training code), so the server can ``import
naslung.ensemble`` to load bundles. Building a bundle by training lives in
:mod:`naslung.ensemble.build` and must be imported explicitly.
"""
from naslung.ensemble.bundle import (BundleError, BundleMember, load_bundle, read_manifest, save_bundle,
                                     sha256_file)
from naslung.ensemble.rules import RULES, combine, decide, fit_weights

__all__ = ["BundleError", "BundleMember", "load_bundle", "read_manifest", "save_bundle", "sha256_file",
           "RULES", "combine", "decide", "fit_weights", "Ensemble", "FastEnsemble"]


def __getattr__(name: str):
    # Ensemble / FastEnsemble need torch.nn; resolve lazily so `import naslung.ensemble` stays cheap.
    if name == "Ensemble":
        from naslung.ensemble.naive import Ensemble

        return Ensemble
    if name == "FastEnsemble":
        from naslung.ensemble.engine import FastEnsemble

        return FastEnsemble
    raise AttributeError(f"module 'naslung.ensemble' has no attribute {name!r}")
