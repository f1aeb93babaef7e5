"""``naslung predict``: ask a running ``naslung serve`` about nodules and print a table.

Input: a CT volume (NIfTI, .mhd, DICOM directory) with --world, the nodule centre in LPS mm (as in
LUNA16 annotations); or a prepared crop .npy (S, S, S) in HU, or a stack of them (N, S, S, S) such
as a prepared dataset's crops.npy, which is sent as one PredictStream.
"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  naslung predict --server 127.0.0.1:50051 --input scan.nii.gz --world -60.5 12.0 -140.2
  naslung predict --server 127.0.0.1:50051 --input /data/LIDC-IDRI-0001/1.3.6...  --world 10 -20 -130
  naslung predict --server 127.0.0.1:50051 --input runs/data/crops.npy          # every crop, streamed
  naslung predict --server 127.0.0.1:50051 --input crop.npy --explain --methods cbam gradcam --out expl/
  naslung predict --server host:50051 --tls-ca ca.pem --token-file token.txt --input crop.npy
"""


def add_parser(subparsers, formatter_class) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="query a naslung server (gRPC) and print predictions",
                              description=__doc__, epilog=EPILOG, formatter_class=formatter_class)
    p.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of naslung serve")
    p.add_argument("--input", required=True, help="NIfTI / .mhd / DICOM dir (needs --world) or crop .npy")
    p.add_argument("--world", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="nodule centre in world coordinates (LPS mm) for a volume input")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help=".npy crops at another voxel spacing (mm): the server resamples them to the model's grid "
                        "(default: none; a crop must then be on the model's grid, e.g. 32x32x32 at 1 mm)")
    p.add_argument("--id", default=None, help="request id (default: the input's file name)")
    p.add_argument("--explain", action="store_true", help="also fetch attribution maps (needs --out)")
    p.add_argument("--methods", nargs="+", default=[], help="explanation methods (default: server's)")
    p.add_argument("--out", default=None, help="directory for maps (.npy, .png, .nii.gz) and predictions.json")
    p.add_argument("--tls-ca", default=None, help="CA / server certificate (PEM) to connect with TLS")
    p.add_argument("--tls-server-name", default=None, help="expected name in the server certificate")
    p.add_argument("--token-file", default=None, help="bearer token file")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    return p


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(width[c]) for c in cols)
    out = [line, "  ".join("-" * width[c] for c in cols)]
    out += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(out)


def _row(r, n_members: int) -> dict:
    if r.HasField("error"):
        return {"id": r.request_id, "p_malignant": "-", "label": "ERROR", "members": r.error.message[:60],
                "version": "", "ms": ""}
    return {"id": r.request_id, "p_malignant": f"{r.malignancy_probability:.4f}", "label": r.label_name,
            "members": " ".join(f"{m.malignancy_probability:.3f}" for m in r.members),
            "version": r.model_version, "ms": f"{r.timing.total_ms:.1f}"}


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import grpc
    from google.protobuf.json_format import MessageToDict

    from service.auth import read_token
    from service.client import NoduleClient, array_from_proto

    if args.explain and not args.out:
        raise ValueError("--explain needs --out DIR for the maps")
    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"input {src} does not exist")
    rid = args.id or src.name
    requests = []
    image = None
    arr = None
    if src.suffix.lower() == ".npy":
        from naslung.data.npyfile import load_npy

        arr = load_npy(src, mmap=True)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"{src}: a crop .npy must be (S, S, S) or (N, S, S, S), got shape {arr.shape}")
        if args.explain and len(arr) != 1:
            raise ValueError(f"{src}: --explain takes one crop, the file holds {len(arr)}")
    else:
        if args.world is None:
            raise ValueError(f"{src} is a volume: give the nodule centre with --world X Y Z (LPS mm)")
        from naslung.data.volume import read_volume

        image = read_volume(src)  # refuses cut or corrupt files (naslung.data.volume.check_image_file_integrity)
        requests = [NoduleClient.image_request(image, args.world, rid)]

    token = read_token(args.token_file) if args.token_file else None
    out = Path(args.out) if args.out else None
    with NoduleClient(args.server, root_cert=args.tls_ca, token=token, timeout=args.timeout,
                      server_name=args.tls_server_name) as client:
        if arr is not None:
            try:
                requests = _crop_requests(arr, src, rid, args.spacing, client.model_info().input_spec)
            except grpc.RpcError as err:
                print(f"naslung predict: server answered {err.code().name}: {err.details()}")
                return 1
        try:
            if args.explain:
                e = client.explain(requests[0], methods=args.methods, include_png=True, include_crop=True)
                responses = [e.prediction]
            elif len(requests) == 1:
                responses = [client.predict(requests[0])]
            else:
                responses = list(client.predict_stream(requests))
        except grpc.RpcError as err:
            print(f"naslung predict: server answered {err.code().name}: {err.details()}")
            return 1
    print(_table([_row(r, 0) for r in responses]))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "predictions.json").write_text(json.dumps(
            [MessageToDict(r, preserving_proto_field_name=True) for r in responses], indent=2) + "\n")
        if args.explain:
            written = _write_maps(e, out, image, args.world)
            print(f"wrote {len(written)} file(s) to {out}: {', '.join(written)}")
    return 0 if all(not r.HasField("error") for r in responses) else 1


def _crop_requests(arr, src, rid: str, spacing, input_spec) -> list:
    """Requests for (N, S, S, S) crops; a crop not on the model's grid is refused, or resampled only when
    its spacing is given (and then said so on stderr): never a silent resample of a wrong-shaped crop."""
    import sys

    import numpy as np

    from naslung.data.npyfile import NpyFileError, check_crop_shape
    from service.client import NoduleClient

    expected = (int(input_spec.size),) * 3
    shape = tuple(arr.shape[1:])
    if spacing is None:
        check_crop_shape(arr, expected, src, stack=True,
                         hint="; a crop at another voxel spacing is resampled by the server when you give "
                              "--spacing X Y Z")
    else:
        if min(shape) < 2:
            raise NpyFileError(src, f"crop has shape {'x'.join(map(str, shape))}: not a crop")
        print(f"naslung predict: NOTE: {src} holds {'x'.join(map(str, shape))} voxels at {spacing} mm (--spacing); "
              f"the server resamples each crop to {'x'.join(map(str, expected))} at {input_spec.spacing_mm:g} mm "
              f"around its centre voxel, padding with {input_spec.pad_hu:g} HU where it does not reach",
              file=sys.stderr)
    ids = [rid] if len(arr) == 1 else [f"{rid}[{i}]" for i in range(len(arr))]
    out = []
    for a, i in zip(arr, ids):
        a = np.asarray(a)
        out.append(NoduleClient.crop_request(a if a.dtype == np.int16 else a.astype(np.float32), spacing, i))
    return out


def _write_maps(e, out, image, world) -> list[str]:
    import numpy as np

    from service.client import array_from_proto

    written = []
    for m in e.maps:
        key = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{m.method}_{m.layer}".strip("_"))
        values = array_from_proto(m.values)
        np.save(out / f"{key}.npy", values)
        written.append(f"{key}.npy")
        if m.png:
            (out / f"{key}.png").write_bytes(m.png)
            written.append(f"{key}.png")
        if world is not None:  # a NIfTI on the crop grid overlays the source scan in any viewer
            try:
                import SimpleITK as sitk

                from naslung.data.crop import crop_as_image
                from naslung.data.spec import CropSpec

                spec = CropSpec(size=values.shape[0], spacing_mm=float(m.spacing[0]) if m.spacing else 1.0)
                sitk.WriteImage(crop_as_image(values, world, spec), str(out / f"{key}.nii.gz"))
                written.append(f"{key}.nii.gz")
            except ImportError:
                pass
    if e.HasField("crop"):
        np.save(out / "crop_hu.npy", array_from_proto(e.crop))
        written.append("crop_hu.npy")
    return written
