"""naslung.explain: attention and attribution maps for one crop, and the files people look at.

Public API::

    explain(predictor, crop_hu, spec, methods, target=None, **options) -> Explanation
    explain_crop(predictor, crop_hu, spec, methods) -> list[AttributionMap]     (the agreed interface)
    write_explanation(out_dir, explanation, crop_hu, spec, geometry)           PNG + HTML + NIfTI + JSON
    render_map_png / render_overview_png / write_viewer / export_nifti         the pieces, one by one
    Geometry.for_crop(center_xyz, spec)                                        the crop's world grid

``predictor`` is one model (``nn.Module`` with ``predict_proba``) or a :class:`naslung.ensemble.Ensemble`;
methods are "cbam", "gradcam", "ig", "occlusion". Faithfulness helpers live in
:mod:`naslung.explain.faithfulness`.
"""
from naslung.explain.attribution import METHODS, AttributionMap, combine, normalise
from naslung.explain.core import CLASS_NAMES, Explanation, explain, explain_crop, members_of
from naslung.explain.figure import render_map_png, render_overview_png
from naslung.explain.nifti import Geometry, export_nifti
from naslung.explain.report import write_explanation
from naslung.explain.viewer import write_viewer

__all__ = ["METHODS", "AttributionMap", "combine", "normalise", "CLASS_NAMES", "Explanation", "explain",
           "explain_crop", "members_of", "render_map_png", "render_overview_png", "Geometry", "export_nifti",
           "write_explanation", "write_viewer"]
