"""The HTML viewer in real headless Chromium: it loads offline, the sliders move the shown slice,
the method selector and opacity change the picture, and nothing errors or touches the network.

Skips (with the reason) only where no Chromium binary is installed; CI installs Debian's
``chromium`` in .ci/run. Set NASLUNG_VIEWER_SCREENSHOT=path to also keep a screenshot elsewhere
(docs/explain_viewer.png was made that way).
"""
from __future__ import annotations

import os
import shutil

import pytest

from naslung.data.spec import CropSpec
from naslung.explain import explain, write_explanation

from chromium import Browser, find_chromium

SPEC16 = CropSpec(size=16)
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install -y chromium; .ci/run does this) -- HTML viewer test skipped")


@pytest.fixture(scope="module")
def browser():
    b = Browser(CHROMIUM)
    yield b
    b.close()


def _slider(b: Browser, plane: str, value: int) -> None:
    b.eval(f"(() => {{ const s = document.getElementById('slider-{plane}'); s.value = {value}; "
           f"s.dispatchEvent(new Event('input', {{bubbles: true}})); }})()")


def test_viewer_in_headless_chromium(tmp_path, browser, tiny_model, blob_crop):
    e = explain(tiny_model, blob_crop, SPEC16, ["cbam", "gradcam"])
    rec = write_explanation(tmp_path, e, blob_crop, SPEC16, png=False, nifti=False, facts={"input": "blob"})
    page = tmp_path / rec["files"]["html"]
    browser.open(page.as_uri())
    v = "window.naslungViewer"
    assert browser.eval(f"{v}.size") == 16
    assert browser.eval(f"{v}.methods") == [m.key for m in e.maps]
    assert browser.eval("document.getElementById('prediction').textContent") == e.predicted_name
    assert browser.eval("document.getElementById('canvas-axial').dataset.slice") == "8"
    assert browser.eval(f"{v}.state.method") == "gradcam"  # opens on Grad-CAM when present
    browser.eval(f"{v}.setMethod('cbam_stem')")

    # Moving a slider changes the shown slice: state, label, data-slice and the canvas pixels.
    before = {p: browser.eval(f"{v}.checksum('{p}')") for p in ("axial", "coronal", "sagittal")}
    _slider(browser, "axial", 2)
    assert browser.eval("document.getElementById('canvas-axial').dataset.slice") == "2"
    assert browser.eval(f"{v}.state.slice.axial") == 2
    after = browser.eval(f"{v}.checksum('axial')")
    assert after != before["axial"]
    # back to the first slice gives back exactly the first picture (a redraw, not noise)
    _slider(browser, "axial", 8)
    assert browser.eval(f"{v}.checksum('axial')") == before["axial"]

    # The method selector and the opacity slider change what is drawn.
    browser.eval("(() => { const s = document.getElementById('method'); s.value = 'gradcam'; "
                 "s.dispatchEvent(new Event('change')); })()")
    assert browser.eval(f"{v}.state.method") == "gradcam"
    grad = browser.eval(f"{v}.checksum('axial')")
    assert grad != before["axial"]
    assert "Grad-CAM" in browser.eval("document.getElementById('note').textContent")
    browser.eval("(() => { const s = document.getElementById('opacity'); s.value = 0; "
                 "s.dispatchEvent(new Event('input')); })()")
    ct_only_by_opacity = browser.eval(f"{v}.checksum('axial')")
    assert ct_only_by_opacity != grad
    browser.eval(f"{v}.setMethod('none')")
    assert browser.eval(f"{v}.checksum('axial')") == ct_only_by_opacity  # opacity 0 == no overlay

    browser.eval(f"{v}.setOpacity(0.45); {v}.setMethod('cbam_stem')")
    shot = browser.screenshot(tmp_path / "viewer.png")
    assert shot.stat().st_size > 20_000
    assert browser.errors() == []
    assert all(u.startswith("file://") for u in browser.requests()), browser.requests()
    keep = os.environ.get("NASLUNG_VIEWER_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_viewer_reports_page_errors(tmp_path, browser):
    """The harness itself must see console errors, or the no-error assertion above means nothing."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); document.body.dataset.ready='1';"
                   "null.x;</script></body></html>")
    browser.events.clear()
    browser.open(bad.as_uri())
    errs = browser.errors()
    assert any("boom" in e for e in errs) and any("exception" in e for e in errs), errs
