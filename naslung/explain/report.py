"""Write one explained prediction to a directory: the files a person opens.

Layout::

    OUT/explanation.json        prediction, member probabilities, every map's method/layer/range, files
    OUT/overview.png            all maps, three central planes each
    OUT/<map key>.png           per map: three planes + axial strip, colour bar, prediction in the title
    OUT/viewer.html             self-contained interactive viewer (no network)
    OUT/nifti/crop.nii.gz       the crop (int16 HU) on its real world grid
    OUT/nifti/map_<key>.nii.gz  each map (float32, 0-1) on the same grid
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from naslung.data.spec import CropSpec
from naslung.explain.core import Explanation
from naslung.explain.figure import render_map_png, render_overview_png
from naslung.explain.nifti import Geometry, export_nifti
from naslung.explain.viewer import write_viewer

log = logging.getLogger(__name__)


def display_summary(expl: Explanation, facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the figure titles and the viewer's header show."""
    s = expl.summary()
    s.pop("maps", None)
    s["facts"] = {str(k): str(v) for k, v in (facts or {}).items()}
    return s


def write_explanation(out_dir: str | Path, expl: Explanation, crop_hu: np.ndarray, spec: CropSpec,
                      geometry: Geometry | None = None, *, facts: Mapping[str, Any] | None = None,
                      png: bool = True,
                      html: bool = True, nifti: bool = True) -> dict[str, Any]:
    """Write PNGs, the HTML viewer and NIfTI files for ``expl``; returns the JSON record written.

    Without ``geometry`` the NIfTI files get an axis-aligned grid at the origin (say so in facts);
    pass :meth:`Geometry.for_crop` so they overlay the source scan.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    crop = np.asarray(crop_hu)
    summary = display_summary(expl, facts)
    files: dict[str, Any] = {}
    t0 = time.perf_counter()
    if png:
        files["overview_png"] = render_overview_png(crop, expl.maps, summary, out / "overview.png").name
        files["png"] = {m.key: render_map_png(crop, m, summary, out / f"{m.key}.png",
                                              spacing_mm=spec.spacing_mm).name for m in expl.maps}
    if html:
        files["html"] = write_viewer(out / "viewer.html", crop, expl.maps, summary, spec.spacing_mm,
                                     title=f"NASLung explanation: {summary['predicted_name']} "
                                           f"(P(malignant) {summary['p_malignant']:.3f})").name
    if nifti:
        geo = geometry or Geometry((0.0, 0.0, 0.0), (spec.spacing_mm,) * 3)
        paths = export_nifti(out / "nifti", crop, expl.maps, geo)
        files["nifti"] = {k: str(p.relative_to(out)) for k, p in paths.items()}
    record = {"prediction": {k: v for k, v in expl.summary().items() if k != "maps"},
              "maps": [m.summary() for m in expl.maps],
              "member_maps": [m.summary() for m in expl.member_maps],
              "crop_spec": spec.to_dict(),
              "geometry": (geometry.to_dict() if geometry is not None else None),
              "facts": summary["facts"], "files": files,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "explanation.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log.info("wrote explanation files to %s in %.1fs", out, time.perf_counter() - t0)
    return record
