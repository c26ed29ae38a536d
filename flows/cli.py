"""The `embedpipe` command: one subcommand per flow.

Every module of flows/ that defines ``add_command(subparsers)`` contributes its subcommand; the
parser it adds sets ``run``, a function taking the parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import flows
from flows.environment import default_store


def store_argument(parser: argparse.ArgumentParser) -> None:
    """The --store option every subcommand shares."""
    parser.add_argument(
        "--store",
        default=default_store(),
        help="artifact store: a folder or an fsspec URL such as s3://bucket/embedpipe "
        "(default: $EMBEDPIPE_STORE or ./work/store)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedpipe",
        description="Build embedding models from Wikipedia dumps and web image collections.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(flows.__path__), key=lambda m: m.name):
        if module_info.name in ("cli", "environment") or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"flows.{module_info.name}")
        if hasattr(module, "add_command"):
            module.add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tasks.common import InputError

    try:
        return int(args.run(args) or 0)
    except InputError as e:  # the message says what is wrong and how to fix it: no traceback
        print(f"embedpipe {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a re-run resumes from the finished parts", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
