"""Latent MPC: plan with an action-conditioned VJEPA on a control task seen through
the Noisy TV, and compare planning on the predictive mean with planning on sampled futures.

See docs/method.md#sampling-based-mpc.

The goal sits next to an unsafe region. A planner that trusts the predictive mean drives the
state onto the goal and steps over the edge whenever the noise pushes; a planner that scores
sampled latent rollouts with CVaR keeps the margin the predicted spread calls for.

    python examples/mpc.py --quick
    python examples/mpc.py --seeds 0-4 --episodes 50
"""

from __future__ import annotations

import argparse

import torch

from bjepa.cli._common import parse_int_list
from bjepa.data import control
from bjepa.experiments.mpc import (
    MPCConfig,
    build_model,
    build_policies,
    format_table,
    make_params,
    make_task,
    run_episodes,
    summarise,
)
from bjepa.inference import fit
from bjepa.inference.fit import set_seed

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--seeds", "0", "--episodes", "4", "--num-steps", "40",
              "--planners", "oracle,mean,sampling,goal-prior"]


def main(args: argparse.Namespace) -> list[dict]:
    cfg = MPCConfig.quick() if args.quick else MPCConfig()
    cfg.planners = args.planners.split(",") if args.planners else cfg.planners
    cfg.seeds = args.seeds or cfg.seeds
    cfg.episodes = args.episodes or cfg.episodes
    cfg.steps = args.num_steps or cfg.steps
    cfg.lr = args.learning_rate or cfg.lr
    cfg.device = args.device
    cfg.validate()
    rows = []
    for seed in cfg.seeds:
        # 1. the task and random-action exploration data (observations only go to the model)
        params = make_params(cfg, seed)
        data = control.explore(params, cfg.explore_steps, seed)
        # 2. action-conditioned VJEPA on (x_t, u_t) -> x_{t+1}: the predictor reads [z, u]
        set_seed(seed)
        model = build_model(cfg)
        x, u, y = data.pairs
        fit(model, model.pack(x, u), y, steps=cfg.steps, lr=cfg.lr, seed=seed,
            device=cfg.device, progress=False)
        model.eval()
        # 3. the task on latents: encoded goal, decoder slope fitted on exploration frames
        task = make_task(model, data, cfg.device)
        # 4. every planner on the same episodes of the true system
        torch.manual_seed(seed)
        for name, policy in build_policies(cfg.planners, cfg, model, task, data, seed).items():
            out = run_episodes(policy, params, data, cfg.episodes, seed=10_000 + seed)
            row = {"planner": name, "seed": seed, "episodes": cfg.episodes, "plan_seconds": 0.0}
            row.update({k: float(out[k].mean()) for k in (
                "cost", "state_cost", "control_cost", "violation_rate", "violated_episodes",
                "success", "final_distance", "backoff")})
            rows.append(row)
            print(f"seed {seed} {name:>16}: cost {row['cost']:7.3f}  unsafe steps "
                  f"{row['violation_rate']:.3f}  safe success {row['success']:.2f}  "
                  f"margin kept {row['backoff']:.3f}")
    print()
    print(format_table(summarise(rows)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planners", default=None,
                        help="e.g. oracle,mean,sampling,goal-prior (default: all)")
    parser.add_argument("--seeds", type=parse_int_list, default=None)
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=None, help="training steps")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
