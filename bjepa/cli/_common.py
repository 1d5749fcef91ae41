"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def parse_int_list(text: str) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,2,5"`` → [0, 2, 5]; ranges and lists mix."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                out += list(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers like '0-4' or '0,2', got {text!r}"
                                         ) from err
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def parse_float_list(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers like '0,1,2.5', got {text!r}"
                                         ) from err


def parse_tau(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def device_arg(text: str) -> str:
    """argparse ``type`` of ``--device``: the name, checked to exist on this machine (so a bad
    device fails with one line before a run folder is made)."""
    from bjepa._validation import resolve_device

    try:
        resolve_device(text)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_training_args(p: argparse.ArgumentParser) -> None:
    """``--steps --lr --batch-size --device --out --overwrite --resume --no-progress``.

    A command that uses these must honour ``--resume``: open its folder with
    ``RunFolder(out, resume=args.resume)`` and train with ``fit(..., checkpoint_dir=...,
    resume=args.resume)`` (see :func:`resolve_resumed_config`).
    """
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per model")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=None,
                   help="mini-batch size (default: full batch)")
    p.add_argument("--device", default="cpu", type=device_arg,
                   help="torch device: cpu, cuda or cuda:N (checked before anything is written)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<command>-<time>)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an existing run folder (its results are replaced)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out: finished model runs are kept, "
                        "unfinished ones continue from their last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


#: settings that may change when a run is resumed (where it runs, how it reports)
RESUME_MAY_CHANGE = ("device", "progress", "replicas", "replica_batches")


def resolve_resumed_config(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a resumed run: the stored ``config.json`` with ``device`` and
    ``progress`` taken from the command line. Any other setting given on the command line must
    equal the stored one (resuming with other settings would mix two experiments).

    :param stored: the run's ``config.json``.
    :param given: settings from the command line (``None`` = not given).
    :raises ValueError: naming every setting that differs.
    """
    merged = dict(stored)
    clashes = []
    for key, value in given.items():
        if value is None:
            continue
        if key in RESUME_MAY_CHANGE:
            merged[key] = value
        elif key in stored and stored[key] != value:
            clashes.append(f"{key}={value!r} (the run has {stored[key]!r})")
    if clashes:
        raise ValueError("--resume continues the run with its stored settings, but the command "
                         f"line asks for {', '.join(clashes)}; drop those flags or start a new "
                         "run in another --out")
    return merged
