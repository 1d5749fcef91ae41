"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse


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


def add_training_args(p: argparse.ArgumentParser) -> None:
    """``--steps --lr --batch-size --device --out --overwrite --no-progress``."""
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per model")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=None,
                   help="mini-batch size (default: full batch)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--out", default=None, help="run folder (default: runs/<command>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="reuse an existing run folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
