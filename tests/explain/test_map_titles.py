"""CBAM attention is computed before the head: its figures must not claim to be evidence for a class."""
import numpy as np

from naslung.explain.attribution import AttributionMap
from naslung.explain.figure import title_text


def test_cbam_title_is_class_independent_and_attributions_name_their_class():
    summary = {"predicted_name": "malignant", "p_malignant": 0.8, "target_name": "malignant"}
    v = np.zeros((4, 4, 4), np.float32)
    cbam = title_text(summary, AttributionMap("cbam", "stem", v, target=1))
    grad = title_text(summary, AttributionMap("gradcam", "stages.2", v, target=1))
    assert "evidence" not in cbam and "malignant'" not in cbam.splitlines()[1]
    assert "independent of the class" in cbam
    assert "evidence for 'malignant'" in grad
