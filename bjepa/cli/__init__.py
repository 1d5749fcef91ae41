"""The ``bjepa`` command line. Each module in this package that defines ``register(sub)``
adds one subcommand, so experiments plug in without editing this file."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from bjepa import __version__

    parser = argparse.ArgumentParser(
        prog="bjepa", description="Variational and Bayesian JEPA world models on Pyro.")
    parser.add_argument("--version", action="version", version=f"bjepa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from bjepa.inference.checkpoint import CheckpointError
    from bjepa.inference.fit import NonFiniteLossError

    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, CheckpointError,
            NonFiniteLossError) as err:
        print(f"bjepa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (NotADirectoryError, IsADirectoryError, PermissionError) as err:
        what = {NotADirectoryError: "a part of this path is a file, not a folder",
                IsADirectoryError: "this is a folder, a file was expected",
                PermissionError: "permission denied"}[type(err)]
        print(f"bjepa {args.command}: error: {err.filename}: {what}; choose another path",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
