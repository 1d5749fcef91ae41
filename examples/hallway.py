"""Forking hallway: a Gaussian predictor head averages the two futures into the
wall; a mixture density network (MDN) head keeps both.

See docs/method.md#multimodal-hallway.

An agent walks a corridor that forks; at the junction it turns left or right with probability
½. VJEPA (linear encoder, MLP predictor) is trained with each head on observation pairs
``(x_t, x_{t+3})``; an affine probe maps the latent back to positions for evaluation only.

    python examples/hallway.py --quick
    python examples/hallway.py --seeds 0-4 --num-steps 2000 --components 5
"""

from __future__ import annotations

import argparse

import pyro

from bjepa.cli._common import parse_int_list
from bjepa.data import hallway
from bjepa.experiments.hallway import HallwayConfig, format_table, run_one, summarise

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--seeds", "0", "--num-steps", "30"]


def main(args: argparse.Namespace) -> list[dict]:
    cfg = HallwayConfig.quick() if args.quick else HallwayConfig()
    cfg.heads = args.heads.split(",") if args.heads else cfg.heads
    cfg.seeds = args.seeds or cfg.seeds
    cfg.steps = args.num_steps or cfg.steps
    cfg.lr = args.learning_rate or cfg.lr
    cfg.n_components = args.components or cfg.n_components
    cfg.device = args.device
    cfg.validate()
    rows = []
    for seed in cfg.seeds:
        # 1. data: one hallway (one observation map M), separate train/test episodes
        train, test = hallway.make_split(seed, train_episodes=cfg.train_episodes,
                                         test_episodes=cfg.test_episodes, obs_dim=cfg.obs_dim,
                                         speed=cfg.speed, horizon=cfg.horizon)
        for head in cfg.heads:
            # 2. train VJEPA with this head; 3. probe latents to positions and evaluate
            pyro.clear_param_store()
            row, _, model = run_one(head, seed, cfg, train, test)
            rows.append(row)
            pred = model.predict(test.context[test.fork_mask()][:1])
            print(f"{head:>5} seed={seed}  NLL at fork={row['nll_fork']:.2f}  "
                  f"mean in wall={row['mean_in_wall']:.2f}  "
                  f"mass L/R={row['mass_left']:.2f}/{row['mass_right']:.2f}  "
                  f"rollouts in corridor={row['rollout_in_corridor']:.2f}  "
                  f"({type(pred).__name__})")
    print()
    print(format_table(summarise(rows)))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default=None, help="e.g. diag,mdn")
    parser.add_argument("--components", type=int, default=None, help="MDN components K")
    parser.add_argument("--seeds", type=parse_int_list, default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
