"""Entry point of the ``naslung`` command.

Each subcommand lives in ``naslung/cli/<name>.py`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Heavy imports (torch, nni, grpc) happen inside ``run`` so that ``--help``
is instant and a broken optional dependency only breaks the command that needs it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the pipeline's order; this is what `naslung --help` lists.
COMMANDS = ("prepare", "train", "search", "ensemble", "evaluate", "serve", "predict", "explain",
            "profile", "demo")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help ends with ``(default: X)`` unless the text already says its default, or there is none to show
    (None, False, []): then the text itself says what happens, never a bare ``(default: None)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is False \
                or action.default == [] or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _version() -> str:
    from importlib import metadata

    import naslung

    try:
        return metadata.version("naslung")
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        return getattr(naslung, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="naslung",
        formatter_class=_Formatter,
        description="Search, train, ensemble, serve and explain 3D CNNs for lung-nodule malignancy.",
        epilog="example:\n  naslung prepare --source lidc-shapes --out runs/data\n"
               "  naslung train --data runs/data --model small --folds 5 --out runs/train",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"naslung {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"naslung.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"naslung.cli.{name}":
                raise
            continue  # command not built yet
        p = module.add_parser(sub, _Formatter)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        # Library errors carry a message meant for a person; no traceback unless -vv.
        if args.verbose >= 2:
            raise
        print(f"naslung {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
