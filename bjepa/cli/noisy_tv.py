"""``bjepa noisy-tv``: the Noisy TV reproduction (docs/method.md#noisy-tv)."""

from __future__ import annotations

import argparse
import sys

from bjepa.cli._common import (
    add_training_args,
    parse_float_list,
    parse_int_list,
    parse_tau,
    resolve_resumed_config,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noisy-tv", help="train models on Noisy TV and probe their representations",
                       description=__doc__)
    p.add_argument("--models", default=None,
                   help="comma-separated: vjepa,bjepa,jepa,vae,ar (default: vjepa,jepa,vae,ar)")
    p.add_argument("--sigmas", type=parse_float_list, default=None,
                   help="distractor strengths, e.g. 0,1,2,4,8")
    p.add_argument("--seeds", type=parse_int_list, default=None, help="e.g. 0-4 or 0,3")
    p.add_argument("--beta", type=float, default=None, help="VJEPA/BJEPA KL weight β")
    p.add_argument("--tau", type=parse_tau, default=None,
                   help="EMA momentum τ in [0,1] or 'cosine' (0.99→1)")
    p.add_argument("--encoder", default=None, metavar="SPEC",
                   help="network family: linear (default) or mlp (two GELU hidden layers); "
                        "an MLP's options may follow, e.g. mlp:depth=1,activation=tanh")
    p.add_argument("--hidden-dim", type=int, default=None,
                   help="width of every MLP network (default 64; needs --encoder mlp)")
    p.add_argument("--depth", type=int, default=None,
                   help="hidden layers of every MLP network (default 2; needs --encoder mlp)")
    p.add_argument("--activation", default=None,
                   help="activation of the MLP networks: gelu (default), tanh, relu, silu or "
                        "elu (needs --encoder mlp)")
    p.add_argument("--init", default=None, choices=["cca", "random"],
                   help="start of the JEPA/VJEPA/BJEPA encoders: cca (data-dependent) or random "
                        "(default: each model's own, cca for VJEPA and BJEPA, random for JEPA)")
    p.add_argument("--replicas", type=int, default=None,
                   help="runs of one model trained as one batched program (default: as many "
                        "as fit in ~1 GiB; 1 = one at a time, with periodic training "
                        "checkpoints for --resume mid-run)")
    p.add_argument("--exact-replicas", action="store_true",
                   help="batched runs draw their own mini-batches, so each equals the same "
                        "run trained alone (about 30%% slower than the shared draw)")
    p.add_argument("--elbo", default=None, choices=["auto", "meanfield", "inductor"],
                   help="how each step is computed: auto (default; TorchInductor for runs of "
                        "≥ 15 M row-steps, TorchScript for other long runs), "
                        "meanfield (eager) or inductor (the whole step compiled by "
                        "TorchInductor: fastest per step, needs a C++ compiler and seconds to "
                        "compile; models that cannot be compiled use auto)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true",
                        help="small, fast configuration (σ ∈ {0,4,8}, 2 seeds, 800 full-batch "
                             "steps on 2000 frames)")
    budget.add_argument("--paper-budget", action="store_true",
                        help="the paper's protocol: 6000 full-batch steps at lr 1e-3 (default: "
                             "the recommended 1000 steps of 256 rows at lr 3e-3)")
    add_training_args(p)
    p.set_defaults(func=run)


def encoder_spec(encoder: str | None, depth: int | None, activation: str | None) -> str | None:
    """``--encoder`` with ``--depth``/``--activation`` folded into its spec (``None``: none
    given)."""
    from bjepa.models.encoders import mlp_spec, parse_encoder_spec

    if depth is None and activation is None:
        return encoder
    if encoder is None or parse_encoder_spec(encoder)[0] != "mlp":
        raise ValueError("--depth and --activation shape the MLP networks; add --encoder mlp")
    if encoder != "mlp":
        raise ValueError(f"--encoder {encoder} already carries MLP options; give them either "
                         "there or as --depth/--activation, not both")
    return mlp_spec(depth, activation)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict, fields

    from bjepa.experiments.noisy_tv import NoisyTVConfig, format_table, summarise
    from bjepa.experiments.noisy_tv import run as run_experiment
    from bjepa.inference.checkpoint import CheckpointError
    from bjepa.inference.fit import NonFiniteLossError
    from bjepa.runs import RunFolder, default_run_dir

    overrides = {
        "encoder": encoder_spec(args.encoder, args.depth, args.activation),
        "hidden_dim": args.hidden_dim, "init": args.init,
        "models": args.models.split(",") if args.models else None,
        "sigmas": args.sigmas, "seeds": args.seeds, "steps": args.steps, "lr": args.lr,
        "batch_size": args.batch_size, "beta": args.beta, "tau": args.tau,
        "device": args.device, "progress": not args.no_progress,
        "replicas": args.replicas,
        "replica_batches": "own" if args.exact_replicas else None, "elbo": args.elbo,
    }
    if args.quick:
        cfg = NoisyTVConfig.quick(**overrides)
    elif args.paper_budget:
        cfg = NoisyTVConfig.paper_budget(**overrides)
    else:
        cfg = NoisyTVConfig(**{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    with RunFolder(args.out or default_run_dir("noisy-tv"), overwrite=args.overwrite,
                   resume=args.resume) as folder:
        if folder.resumed:
            given = asdict(cfg) if args.quick or args.paper_budget else overrides
            known = {f.name for f in fields(NoisyTVConfig)}
            stored = {k: v for k, v in folder.read_json("config.json").items() if k in known}
            cfg = NoisyTVConfig(**resolve_resumed_config(stored, given)).validate()
        n = len(cfg.models) * len(cfg.sigmas) * len(cfg.seeds)
        verb = "resuming" if folder.resumed else "Noisy TV:"
        print(f"{verb} {n} runs ({', '.join(cfg.models)} × σ {cfg.sigmas} × seeds "
              f"{cfg.seeds}), {cfg.steps} steps each → {folder.path}")
        try:
            rows = run_experiment(cfg, folder, resume=args.resume)
        except KeyboardInterrupt:
            print(f"interrupted; continue with: bjepa noisy-tv --out {folder.path} --resume",
                  file=sys.stderr)
            raise
        except (CheckpointError, NonFiniteLossError) as err:
            print(f"bjepa noisy-tv: error: {err}", file=sys.stderr)
            return 2
    print(format_table(summarise(rows)))
    print(f"\nwrote {folder.path}/: config.json metrics.jsonl results.csv results.json "
          "r2_vs_sigma.png checkpoints/")
    return 0
