"""``bjepa train``: train one model on one dataset and write its run folder (config.json,
metrics.jsonl, checkpoints/, model.pt, results.json with the probe R²).

With ``--strategy ddp`` and ``torchrun`` the model trains on several processes (one per GPU, or
several CPU processes); see docs/scaling.md::

    torchrun --standalone --nproc_per_node=2 -m bjepa.cli train --strategy ddp \\
        --model vjepa --sigma 8 --seed 0 --steps 2000 --batch-size 512 --out runs/ddp

Your own data (a table, an array, image frames or a video; see docs/own_data.md)::

    bjepa train --data macro.csv --columns realgdp,realcons,realinv --time-col date \
        --context-frames 2 --val-frac 0.15 --steps 2000 --out runs/macro
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from bjepa.cli._common import add_training_args, parse_tau, resolve_resumed_config
from bjepa.cli._own_data import add_load_args, add_pair_args, is_file_data

#: settings of a ``bjepa train`` run and their defaults (the paper's Noisy TV set-up)
DEFAULTS: dict[str, Any] = {
    "model": "vjepa", "data": "noisy-tv", "sigma": 8.0, "seed": 0, "steps": 6000, "lr": 1e-3,
    "batch_size": None, "beta": 0.01, "tau": 0.99, "encoder": "linear", "latent_dim": 4,
    "train_steps": 6000, "test_steps": 2000, "checkpoint_every": None, "log_every": None,
    "device": "cpu", "progress": True, "weight_prior": None,
}


def register(sub: argparse._SubParsersAction) -> None:
    from bjepa.experiments.noisy_tv import MODEL_NAMES

    p = sub.add_parser("train", help="train one model (several processes: torchrun + "
                       "--strategy ddp)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="default: vjepa")
    p.add_argument("--data", default=None, metavar="noisy-tv|PATH",
                   help="'noisy-tv' (default) or your own data: a .csv/.tsv/.parquet table, a "
                        ".npy/.npz array, a folder of images or a video (docs/own_data.md)")
    p.add_argument("--sigma", type=float, default=None,
                   help="Noisy TV distractor strength σ (default 8)")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds the data and the initialisation (default 0)")
    p.add_argument("--beta", type=float, default=None, help="VJEPA/BJEPA KL weight β")
    p.add_argument("--tau", type=parse_tau, default=None,
                   help="EMA momentum τ in [0,1] or 'cosine' (0.99→1)")
    p.add_argument("--encoder", choices=["linear", "mlp"], default=None)
    p.add_argument("--weight-prior", choices=["normal", "laplace", "horseshoe", "hierarchical"],
                   default=None,
                   help="--model bjepa only: a prior over the predictor's weights, so the model "
                        "learns a weight posterior (shown by `bjepa diagnose`)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="frames in the training trajectory (default 6000)")
    p.add_argument("--test-steps", type=int, default=None,
                   help="frames in the test trajectory (default 2000)")
    p.add_argument("--strategy", choices=["single", "ddp"], default="single",
                   help="'ddp': one process per torchrun worker, gradients averaged with "
                        "DistributedDataParallel (default: single)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between training checkpoints (default: steps // 10, >= 50)")
    p.add_argument("--log-every", type=int, default=None,
                   help="steps between metric records (default: steps // 100)")
    add_training_args(p)
    own = p.add_argument_group("your own data (--data PATH; docs/own_data.md)")
    add_load_args(own)
    add_pair_args(own)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from bjepa.inference.distributed import (
        DistributedContext,
        init_distributed,
        shutdown_distributed,
    )

    if args.strategy == "single" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"--strategy single under torchrun with {os.environ['WORLD_SIZE']} "
                         "processes would train that many copies of one model; pass "
                         "--strategy ddp")
    owns_group = args.strategy == "ddp" and not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(args.device) if args.strategy == "ddp" else DistributedContext()
    try:
        if is_file_data(args.data):
            from bjepa.cli._own_data import train

            return train(args, ctx)
        return _run(args, ctx)
    finally:
        if owns_group:
            shutdown_distributed()


def _resolve(args: argparse.Namespace, folder: Any, world_size: int) -> dict[str, Any]:
    """The run's configuration (stored one when resuming), validated, written to config.json."""
    given = {"model": args.model, "data": args.data, "sigma": args.sigma, "seed": args.seed,
             "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
             "beta": args.beta, "tau": args.tau, "encoder": args.encoder,
             "train_steps": args.train_steps, "test_steps": args.test_steps,
             "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
             "device": args.device, "progress": not args.no_progress,
             "weight_prior": getattr(args, "weight_prior", None)}
    if folder.resumed:  # strategy and world_size may change: they are not in DEFAULTS
        stored = folder.read_json("config.json")
        cfg = resolve_resumed_config({k: v for k, v in stored.items() if k in DEFAULTS}, given)
        cfg = {**DEFAULTS, **cfg}
    else:
        cfg = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    cfg.update(strategy=args.strategy, world_size=world_size)
    _experiment_config(cfg)  # validates the shared settings
    for name in ("checkpoint_every", "log_every", "batch_size"):
        if cfg[name] is not None and (isinstance(cfg[name], bool) or cfg[name] < 1):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got "
                             f"{cfg[name]!r}")
    if cfg["seed"] < 0:
        raise ValueError(f"--seed must be >= 0, got {cfg['seed']}")
    if cfg["weight_prior"] is not None and cfg["model"] != "bjepa":
        raise ValueError(f"--weight-prior applies to --model bjepa only, not {cfg['model']}")
    folder.write_json("config.json", cfg)
    return cfg


def _experiment_config(cfg: dict[str, Any]) -> Any:
    from bjepa.experiments.noisy_tv import NoisyTVConfig

    return NoisyTVConfig(
        models=[cfg["model"]], sigmas=[cfg["sigma"]], seeds=[cfg["seed"]], steps=cfg["steps"],
        lr=cfg["lr"], batch_size=cfg["batch_size"], beta=cfg["beta"], tau=cfg["tau"],
        encoder=cfg["encoder"], latent_dim=cfg["latent_dim"], train_steps=cfg["train_steps"],
        test_steps=cfg["test_steps"], device=cfg["device"], progress=cfg["progress"]).validate()


def _steady_rate(records: list[dict[str, float]]) -> float:
    """Steps per second between the first and the last record (start-up excluded)."""
    if len(records) < 2 or records[-1]["seconds"] <= records[0]["seconds"]:
        return float("nan")
    return (records[-1]["step"] - records[0]["step"]) / (records[-1]["seconds"]
                                                        - records[0]["seconds"])


def _run(args: argparse.Namespace, ctx: Any) -> int:
    import sys

    from bjepa.data import noisy_tv
    from bjepa.experiments.noisy_tv import build_model, probe
    from bjepa.inference.checkpoint import CheckpointError, save_checkpoint
    from bjepa.inference.distributed import agree, broadcast
    from bjepa.inference.fit import NonFiniteLossError, fit, set_seed
    from bjepa.runs import RunFolder, default_run_dir

    rank0 = ctx.rank == 0
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    folder, setup, error = None, None, None
    if rank0:
        try:
            folder = RunFolder(args.out or default_run_dir("train"), overwrite=args.overwrite,
                               resume=args.resume)
            cfg = _resolve(args, folder, ctx.world_size)
            if not args.resume:
                shutil.rmtree(folder.file("checkpoints"), ignore_errors=True)
            setup = (cfg, str(folder.path))
        except Exception as err:  # noqa: BLE001 - every process fails together
            if folder is not None:
                folder.close()
            error = err
    agree(ctx, error)
    cfg, out = broadcast(ctx, setup)
    try:
        exp = _experiment_config(cfg)
        train, test = noisy_tv.make_split(cfg["sigma"], cfg["seed"],
                                          train_steps=cfg["train_steps"],
                                          test_steps=cfg["test_steps"])
        set_seed(cfg["seed"])
        model = build_model(cfg["model"], train.obs.shape[1], exp)
        if cfg["weight_prior"] is not None:  # BJEPA with a weight posterior
            from bjepa.models import BJEPA

            model = BJEPA(train.obs.shape[1], exp.latent_dim, beta=exp.beta, tau=exp.tau,
                          encoder=exp.encoder, weight_prior=cfg["weight_prior"])
        steps = cfg["steps"]
        if rank0:
            print(f"{'resuming' if args.resume else 'training'} {cfg['model']} on Noisy TV "
                  f"σ={cfg['sigma']:g} seed={cfg['seed']}: {steps} steps, batch "
                  f"{cfg['batch_size'] or 'full'}, {ctx.world_size} process(es) "
                  f"({cfg['strategy']}) → {out}")
        try:
            hist = fit(
                model, train.obs[:-1], train.obs[1:], steps=steps, lr=cfg["lr"],
                batch_size=cfg["batch_size"], seed=cfg["seed"], device=cfg["device"],
                progress=cfg["progress"] and rank0,
                log_every=cfg["log_every"] or max(steps // 100, 1),
                metrics_path=f"{out}/metrics.jsonl",
                metrics_tags={"model": cfg["model"], "sigma": cfg["sigma"], "seed": cfg["seed"]},
                checkpoint_dir=f"{out}/checkpoints",
                checkpoint_every=cfg["checkpoint_every"] or max(steps // 10, 50), keep_last=2,
                resume=args.resume, strategy=cfg["strategy"])
        except (CheckpointError, NonFiniteLossError) as err:
            if rank0:
                print(f"bjepa train: error: {err}", file=sys.stderr)
            return 2
        if not rank0:
            return 0
        dev = next(model.parameters()).device
        rate = _steady_rate(hist.records)
        rows = cfg["batch_size"] or train.obs.shape[0] - 1
        row = {"model": cfg["model"], "data": cfg["data"], "sigma": cfg["sigma"],
               "seed": cfg["seed"], **probe(model, train.to(dev), test.to(dev)),
               "final_loss": hist.final_loss, "steps": steps,
               "train_seconds": round(hist.seconds, 3), "steps_per_second": rate,
               "samples_per_second": rate * rows, "strategy": cfg["strategy"],
               "world_size": ctx.world_size, "resumed_from": hist.resumed_from}
        save_checkpoint(f"{out}/model.pt", model,
                        meta={"data": "noisy_tv", "train_steps": cfg["train_steps"],
                              "test_steps": cfg["test_steps"], "row": row})
        folder.write_json("results.json", row)
        print(f"signal R² {row['signal_r2']:.3f}, distractor R² {row['noise_r2']:.3f}; "
              f"{rate:.1f} steps/s ({rate * rows:,.0f} samples/s) on {ctx.world_size} "
              f"process(es)\nwrote {out}/: config.json metrics.jsonl checkpoints/ model.pt "
              "results.json")
        return 0
    finally:
        if folder is not None:
            folder.close()
