"""Generate ``service/generated/`` from ``proto/naslung/v1/*.proto`` with grpcio-tools.

The generated modules are checked in (so a fresh clone and a machine without grpcio-tools can
import them) and ``tests/service/test_codegen.py`` regenerates them into a temporary directory and
checks the output is byte-identical, so the .proto stays the single source of truth.

protoc writes ``naslung/v1/x_pb2.py`` with absolute imports (``from naslung.v1 import x_pb2``);
that would collide with the ``naslung`` library package, so the files are flattened into
``service/generated/`` and those imports rewritten to relative ones. The descriptor's file name
stays ``naslung/v1/<name>.proto``, which is what server reflection reports.

Usage: ``python -m service.codegen [--check]``
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTO_PACKAGE_DIR = PROTO_ROOT / "naslung" / "v1"
OUT_DIR = Path(__file__).resolve().parent / "generated"

_INIT = '"""Code generated from proto/naslung/v1 by `python -m service.codegen`. Do not edit."""\n'
_ABS_IMPORT = re.compile(r"^from naslung\.v1 import (\w+_pb2) as ", re.MULTILINE)


def proto_files() -> list[Path]:
    files = sorted(PROTO_PACKAGE_DIR.glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_PACKAGE_DIR}")
    return files


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    """Run protoc on every proto file and write flattened modules into ``out_dir``."""
    from grpc_tools import protoc  # build-time only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}"]
        args += [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed (exit {rc}) on {PROTO_PACKAGE_DIR}")
        for src in sorted((Path(tmp) / "naslung" / "v1").iterdir()):
            text = _ABS_IMPORT.sub(r"from . import \1 as ", src.read_text())
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text(_INIT)
    written.append(init)
    return sorted(written)


def check(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of checked-in generated files that differ from a fresh generation (empty = in sync)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    current = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
    return sorted(n for n in set(fresh) | set(current) if fresh.get(n) != current.get(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the checked-in code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        if stale:
            print(f"service/generated is stale: {', '.join(stale)}; run python -m service.codegen")
            return 1
        print("service/generated matches proto/")
        return 0
    for p in generate():
        print(p.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
