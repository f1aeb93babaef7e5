"""A self-contained HTML viewer for one explained prediction.

Everything the page needs is inside the file: the crop (int16 HU) and every map (uint8) as base64,
the colour table, and about 200 lines of vanilla JavaScript drawing three canvases. A content
security policy forbids any network access, so the file opens the same on an offline workstation.

The page exposes a small hook for tests, ``window.naslungViewer`` (state, ``setSlice``,
``setMethod``, ``setOpacity``, ``checksum(plane)``), and sets ``document.body.dataset.ready = "1"``
once drawn.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from naslung.explain.attribution import AttributionMap
from naslung.explain.figure import CMAP, LUNG_WINDOW, THRESHOLD

METHOD_NOTES = {
    "cbam": "The network's own spatial attention (CBAM spatial gate), averaged over the blocks of one "
            "stage and upsampled to the crop. Shows where the model looked, not why.",
    "gradcam": "Grad-CAM on the last stage: feature-map activations weighted by the gradient of the "
               "explained class score. Coarse (the last stage's resolution), class-specific.",
    "ig": "Integrated Gradients from an all-air baseline: each voxel's share of the change in the "
          "class score between empty lung and this crop. Voxel-level, signed; positive part shown.",
    "occlusion": "Occlusion: how much the class score drops when a small cube of the crop is replaced "
                 "by air. Model-agnostic and slow; resolution set by the window.",
}


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _lut(name: str = CMAP) -> list[int]:
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0, 1, 256))
    return (rgba[:, :3] * 255).round().astype(np.uint8).ravel().tolist()


def viewer_payload(crop_hu: np.ndarray, maps: Sequence[AttributionMap], summary: dict[str, Any],
                   spacing_mm: float = 1.0) -> dict[str, Any]:
    crop = np.asarray(crop_hu)
    if crop.ndim != 3 or len(set(crop.shape)) != 1:
        raise ValueError(f"expected a cubic crop (S, S, S), got {crop.shape}")
    items = []
    for m in maps:
        if m.values.shape != crop.shape:
            raise ValueError(f"map {m.key} has shape {m.values.shape}, crop {crop.shape}")
        q = np.clip(np.round(m.values * 255), 0, 255).astype(np.uint8)
        items.append({"key": m.key, "label": m.label, "method": m.method, "layer": m.layer,
                      "raw_min": m.raw_min, "raw_max": m.raw_max, "note": METHOD_NOTES.get(m.method, ""),
                      "data": _b64(q)})
    return {"size": int(crop.shape[0]), "spacing": float(spacing_mm),
            "ct": _b64(crop.astype("<i2")), "maps": items, "lut": _lut(), "threshold": THRESHOLD,
            "windows": {"lung": list(LUNG_WINDOW), "mediastinal": [350.0, 40.0]},
            "summary": summary}


def write_viewer(path: str | Path, crop_hu: np.ndarray, maps: Sequence[AttributionMap],
                 summary: dict[str, Any], spacing_mm: float = 1.0, title: str = "NASLung explanation") -> Path:
    """Write the viewer page for ``maps`` over ``crop_hu``; ``summary`` is shown as the prediction."""
    payload = json.dumps(viewer_payload(crop_hu, maps, summary, spacing_mm), separators=(",", ":"))
    payload = payload.replace("</", "<\\/")  # never close the <script> early
    page = _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__PAYLOAD__", payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>__TITLE__</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 16px; background: #16181c; color: #e8e8e8; }
 h1 { font-size: 18px; margin: 0 0 8px 0; }
 #summary { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; margin-bottom: 12px; }
 .pred { font-size: 22px; font-weight: 600; }
 .pred.malignant { color: #ff7a6b; } .pred.benign { color: #7bd88f; }
 .bar { width: 240px; height: 12px; background: #333; border-radius: 6px; overflow: hidden; margin-top: 4px; }
 .bar > div { height: 100%; background: linear-gradient(90deg, #7bd88f, #ffd166, #ff7a6b); }
 table { border-collapse: collapse; font-size: 12px; }
 td, th { padding: 2px 8px; border-bottom: 1px solid #333; text-align: left; }
 #controls { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin: 8px 0 12px 0; font-size: 13px; }
 #planes { display: flex; gap: 14px; flex-wrap: wrap; }
 .plane { display: flex; flex-direction: column; align-items: center; font-size: 13px; }
 .frame { position: relative; }
 .frame span { position: absolute; color: #ffd400; font-weight: 700; font-size: 13px; pointer-events: none; }
 .t { top: 2px; left: 50%; transform: translateX(-50%); } .b { bottom: 2px; left: 50%; transform: translateX(-50%); }
 .l { left: 4px; top: 50%; transform: translateY(-50%); } .r { right: 4px; top: 50%; transform: translateY(-50%); }
 canvas.view { image-rendering: pixelated; border: 1px solid #444; cursor: crosshair; }
 input[type=range] { width: 256px; }
 #note { font-size: 12px; color: #aaa; max-width: 820px; margin-top: 10px; }
 #probe { font-size: 12px; color: #ccc; min-height: 16px; margin-top: 6px; font-family: monospace; }
 .cbar { display: flex; flex-direction: column; align-items: center; font-size: 11px; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div id="summary"></div>
<div id="controls">
 <label>Map <select id="method"></select></label>
 <label>Overlay opacity <input id="opacity" type="range" min="0" max="100" value="45"></label>
 <span id="opacityValue">0.45</span>
 <label>CT window <select id="window"></select></label>
</div>
<div id="planes"></div>
<div id="probe"></div>
<div id="note"></div>
<script id="naslung-data" type="application/json">__PAYLOAD__</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("naslung-data").textContent);
  const S = D.size, DISPLAY = 288;
  function decode(b64) {
    const bin = atob(b64), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  const ct = new Int16Array(decode(D.ct).buffer);
  const maps = D.maps.map(m => Object.assign({}, m, {values: decode(m.data)}));
  const lut = D.lut;
  const state = {slice: {axial: S >> 1, coronal: S >> 1, sagittal: S >> 1},
                 method: "none", opacity: 0.45, window: "lung"};
  // Open on the map that reads best at a glance: Grad-CAM, then the others in order.
  for (const k of ["gradcam", "occlusion", "ig"]) if (maps.some(m => m.key === k)) { state.method = k; break; }
  if (state.method === "none" && maps.length) state.method = maps[0].key;
  // Same display convention as the PNG: volume (z, y, x), LPS; patient right on the image left.
  const PLANES = {
    axial:    {letters: ["A", "P", "R", "L"], at: (i, r, c) => (i * S + r) * S + c},
    coronal:  {letters: ["S", "I", "R", "L"], at: (i, r, c) => ((S - 1 - r) * S + i) * S + c},
    sagittal: {letters: ["S", "I", "A", "P"], at: (i, r, c) => ((S - 1 - r) * S + c) * S + i},
  };
  const views = {};
  const planesDiv = document.getElementById("planes");
  for (const name of Object.keys(PLANES)) {
    const p = PLANES[name];
    const box = document.createElement("div"); box.className = "plane";
    const lab = document.createElement("div"); box.appendChild(lab);
    const frame = document.createElement("div"); frame.className = "frame";
    const cv = document.createElement("canvas"); cv.className = "view"; cv.id = "canvas-" + name;
    cv.width = DISPLAY; cv.height = DISPLAY; frame.appendChild(cv);
    ["t", "b", "l", "r"].forEach((cls, k) => {
      const s = document.createElement("span"); s.className = cls; s.textContent = p.letters[k]; frame.appendChild(s);
    });
    box.appendChild(frame);
    const slider = document.createElement("input");
    slider.type = "range"; slider.min = 0; slider.max = S - 1; slider.value = state.slice[name];
    slider.id = "slider-" + name;
    slider.addEventListener("input", () => { state.slice[name] = parseInt(slider.value, 10); drawAll(); });
    box.appendChild(slider);
    planesDiv.appendChild(box);
    const off = document.createElement("canvas"); off.width = S; off.height = S;
    views[name] = {canvas: cv, slider: slider, label: lab, off: off, plane: p};
    cv.addEventListener("click", ev => clickTo(name, ev));
    cv.addEventListener("mousemove", ev => probe(name, ev));
  }
  const cbar = document.createElement("div"); cbar.className = "cbar";
  const cbc = document.createElement("canvas"); cbc.width = 14; cbc.height = DISPLAY - 30;
  cbar.appendChild(document.createTextNode("1.0")); cbar.appendChild(cbc); cbar.appendChild(document.createTextNode("0.0"));
  planesDiv.appendChild(cbar);
  (function () {
    const g = cbc.getContext("2d");
    for (let y = 0; y < cbc.height; y++) {
      const k = Math.round(255 * (1 - y / (cbc.height - 1)));
      g.fillStyle = "rgb(" + lut[3 * k] + "," + lut[3 * k + 1] + "," + lut[3 * k + 2] + ")";
      g.fillRect(0, y, cbc.width, 1);
    }
  })();

  function currentMap() { return maps.find(m => m.key === state.method) || null; }
  function draw(name) {
    const v = views[name], i = state.slice[name], m = currentMap();
    const w = D.windows[state.window], lo = w[1] - w[0] / 2, width = w[0];
    const g = v.off.getContext("2d"), img = g.createImageData(S, S), px = img.data;
    for (let r = 0; r < S; r++) for (let c = 0; c < S; c++) {
      const idx = v.plane.at(i, r, c);
      let grey = Math.min(255, Math.max(0, Math.round(255 * (ct[idx] - lo) / width)));
      let R = grey, G = grey, B = grey;
      if (m) {
        const val = m.values[idx], a = state.opacity * Math.min(1, (val / 255) / D.threshold);
        R = (1 - a) * R + a * lut[3 * val]; G = (1 - a) * G + a * lut[3 * val + 1]; B = (1 - a) * B + a * lut[3 * val + 2];
      }
      const o = 4 * (r * S + c);
      px[o] = R; px[o + 1] = G; px[o + 2] = B; px[o + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    const ctx = v.canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(v.off, 0, 0, DISPLAY, DISPLAY);
    // Crosshair: where the other two planes cut this one.
    const k = DISPLAY / S, sl = state.slice;
    let cx, cy;
    if (name === "axial") { cx = sl.sagittal; cy = sl.coronal; }
    else if (name === "coronal") { cx = sl.sagittal; cy = S - 1 - sl.axial; }
    else { cx = sl.coronal; cy = S - 1 - sl.axial; }
    ctx.strokeStyle = "rgba(255,255,255,0.35)"; ctx.setLineDash([4, 4]); ctx.beginPath();
    ctx.moveTo((cx + 0.5) * k, 0); ctx.lineTo((cx + 0.5) * k, DISPLAY);
    ctx.moveTo(0, (cy + 0.5) * k); ctx.lineTo(DISPLAY, (cy + 0.5) * k); ctx.stroke(); ctx.setLineDash([]);
    v.label.textContent = name + "  " + (i + 1) + " / " + S;
    v.slider.value = i;
    v.canvas.dataset.slice = String(i);
  }
  function drawAll() { for (const n of Object.keys(views)) draw(n); }
  function cell(name, ev) {
    const rect = views[name].canvas.getBoundingClientRect();
    const c = Math.floor((ev.clientX - rect.left) / rect.width * S), r = Math.floor((ev.clientY - rect.top) / rect.height * S);
    return [Math.min(S - 1, Math.max(0, r)), Math.min(S - 1, Math.max(0, c))];
  }
  function clickTo(name, ev) {
    const [r, c] = cell(name, ev), sl = state.slice;
    if (name === "axial") { sl.coronal = r; sl.sagittal = c; }
    else if (name === "coronal") { sl.axial = S - 1 - r; sl.sagittal = c; }
    else { sl.axial = S - 1 - r; sl.coronal = c; }
    drawAll();
  }
  function probe(name, ev) {
    const [r, c] = cell(name, ev), idx = views[name].plane.at(state.slice[name], r, c), m = currentMap();
    const z = Math.floor(idx / (S * S)), y = Math.floor(idx / S) % S, x = idx % S;
    document.getElementById("probe").textContent = "voxel (z " + z + ", y " + y + ", x " + x + ")  CT " + ct[idx] +
      " HU" + (m ? "   " + m.label + " " + (m.values[idx] / 255).toFixed(2) : "");
  }
  // Controls and summary
  const sel = document.getElementById("method");
  for (const m of maps) { const o = document.createElement("option"); o.value = m.key; o.textContent = m.label; sel.appendChild(o); }
  const none = document.createElement("option"); none.value = "none"; none.textContent = "(CT only)"; sel.appendChild(none);
  sel.value = state.method;
  sel.addEventListener("change", () => setMethod(sel.value));
  const op = document.getElementById("opacity");
  op.addEventListener("input", () => setOpacity(parseInt(op.value, 10) / 100));
  const win = document.getElementById("window");
  for (const k of Object.keys(D.windows)) {
    const o = document.createElement("option"); o.value = k; o.textContent = k + " (W" + D.windows[k][0] + " / L" + D.windows[k][1] + ")"; win.appendChild(o);
  }
  win.addEventListener("change", () => { state.window = win.value; drawAll(); });
  function setMethod(key) {
    state.method = key; sel.value = key;
    const m = currentMap();
    document.getElementById("note").textContent = m ? (m.label + ": " + m.note + "  Raw range " +
      Number(m.raw_min).toPrecision(3) + " to " + Number(m.raw_max).toPrecision(3) + ", shown scaled to 0-1.") : "CT only.";
    drawAll();
  }
  function setOpacity(a) {
    state.opacity = a; op.value = Math.round(a * 100);
    document.getElementById("opacityValue").textContent = a.toFixed(2); drawAll();
  }
  function esc(s) { const d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }
  (function summary() {
    const s = D.summary || {}, box = document.getElementById("summary");
    const p = typeof s.p_malignant === "number" ? s.p_malignant : null;
    let h = "<div><div class='pred " + esc(s.predicted_name || "") + "' id='prediction'>" + esc(s.predicted_name || "?") + "</div>";
    if (p !== null) h += "<div>P(malignant) = " + p.toFixed(3) + "</div><div class='bar'><div style='width:" + (100 * p).toFixed(1) + "%'></div></div>";
    h += "<div style='font-size:12px;color:#aaa;margin-top:4px'>Grad-CAM / IG / occlusion explain class '" + esc(s.target_name || "") + "'; CBAM attention is the same for every class</div></div>";
    const mp = s.member_proba || {};
    if (Object.keys(mp).length) {
      h += "<table><tr><th>member</th><th>P(malignant)</th><th>weight</th></tr>";
      for (const k of Object.keys(mp)) h += "<tr><td>" + esc(k) + "</td><td>" + mp[k][1].toFixed(3) + "</td><td>" +
        (s.member_weights && k in s.member_weights ? Number(s.member_weights[k]).toFixed(3) : "") + "</td></tr>";
      h += "</table>";
    }
    const facts = s.facts || {};
    if (Object.keys(facts).length) {
      h += "<table>";
      for (const k of Object.keys(facts)) h += "<tr><th>" + esc(k) + "</th><td>" + esc(facts[k]) + "</td></tr>";
      h += "</table>";
    }
    box.innerHTML = h;
  })();
  setMethod(state.method);
  // Test hook (also handy from the browser console).
  window.naslungViewer = {
    state: state, size: S, methods: maps.map(m => m.key),
    setSlice: function (plane, i) { state.slice[plane] = Math.min(S - 1, Math.max(0, i | 0)); drawAll(); },
    setMethod: setMethod, setOpacity: setOpacity,
    checksum: function (plane) {
      const cv = views[plane].canvas, d = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data;
      let h = 0; for (let i = 0; i < d.length; i++) h = (h * 31 + d[i]) >>> 0; return h;
    },
  };
  document.body.dataset.ready = "1";
})();
</script>
</body>
</html>
"""
