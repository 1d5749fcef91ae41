"""``bjepa tau-ablation``: VJEPA's EMA target momentum τ on Noisy TV.

See docs/method.md#ema-tau-ablation.

τ = 0 makes the target encoder a stop-gradient copy of the context encoder; ``cosine:a:b``
ramps τ from a to b over training."""

from __future__ import annotations

import argparse

from bjepa.cli._common import parse_tau
from bjepa.cli.beta_sweep import add_sweep_args, run_sweep_command

__all__ = ["register", "run"]


def _tau_list(text: str) -> list[float | str]:
    return [parse_tau(p.strip()) for p in text.split(",") if p.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tau-ablation", help="ablate VJEPA's EMA momentum τ on Noisy TV",
                       description=__doc__)
    p.add_argument("--taus", type=_tau_list, default=None,
                   help="EMA momenta (default: 0,0.9,0.99,0.996,0.999,cosine:0.99:1)")
    p.add_argument("--beta", type=float, default=None, help="KL weight β (default 0.01)")
    add_sweep_args(p, "small, fast configuration (all six τ, σ = 8, 2 seeds, 600 steps)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bjepa.experiments.sweeps import TauAblationConfig, run_tau_ablation

    return run_sweep_command(args, "tau-ablation", TauAblationConfig,
                             {"taus": args.taus, "beta": args.beta}, run_tau_ablation, "tau",
                             "tau_ablation.png")
