"""``bjepa train --data PATH``: train on your own file (not a subcommand; used by train.py and
shared with ``bjepa encode`` / ``bjepa predict``).

The data are loaded and validated — and the model built and checked against them — before
anything is written to the run folder, so a bad file leaves no half-made run behind.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Any

#: settings of a ``bjepa train --data PATH`` run and their defaults
DEFAULTS: dict[str, Any] = {
    "model": "vjepa", "seed": 0, "steps": 2000, "lr": 3e-3, "batch_size": None, "beta": 0.01,
    "tau": 0.99, "encoder": "linear", "latent_dim": 4, "checkpoint_every": None,
    "log_every": None, "device": "cpu", "progress": True, "weight_prior": None,
}
#: load options stored in the run (and reused by encode/predict)
LOAD_KEYS = ("columns", "time_col", "episode_col", "missing", "key", "size", "grayscale", "crop")
PAIR_KEYS = ("context_frames", "horizon", "val_frac", "test_frac", "split", "seed")
#: without --batch-size, data with more training pairs than this train in mini-batches of it
AUTO_BATCH = 4096
#: stream from disk when the training pairs would take more memory than this
STREAM_BYTES = 512 << 20
#: validation pairs evaluated during training (an evenly spaced subset beyond this)
MAX_VAL_ROWS = 16384


def is_file_data(data: str | None) -> bool:
    return data is not None and data != "noisy-tv"


def _columns(text: str) -> list[str]:
    cols = [c.strip() for c in text.split(",") if c.strip()]
    if not cols:
        raise argparse.ArgumentTypeError("expected column names like 'a,b,c'")
    return cols


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected HxW like 32x32, got {text!r}") from err
    return h, w


def _crop(text: str) -> tuple[int, int, int, int]:
    try:
        top, left, h, w = (int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected TOP,LEFT,HEIGHT,WIDTH, got {text!r}"
                                         ) from err
    return top, left, h, w


def add_load_args(p: argparse.ArgumentParser, *, defaults_from_run: bool = False) -> None:
    """Options that say how to read a data file (tables, arrays, frames)."""
    note = " (default: as in the run)" if defaults_from_run else ""
    p.add_argument("--columns", type=_columns, default=None,
                   help="comma-separated feature columns of a table, or array columns by "
                        f"number{note}")
    p.add_argument("--time-col", default=None,
                   help=f"a table's time/date column: rows are sorted by it{note}")
    p.add_argument("--episode-col", default=None,
                   help=f"a table's episode-id column: no pair crosses two episodes{note}")
    p.add_argument("--missing", choices=["raise", "drop", "ffill", "interpolate"],
                   default=None, help=f"missing/infinite values (default: raise){note}")
    p.add_argument("--key", default=None, help="which array of an .npz file")
    p.add_argument("--frame-size", type=_size, default=None,
                   help="resize image/video frames to HxW")
    p.add_argument("--grayscale", action="store_true", default=None,
                   help="image/video frames to one grey channel")
    p.add_argument("--crop", type=_crop, default=None,
                   help="crop image/video frames to TOP,LEFT,HEIGHT,WIDTH pixels")


def add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context-frames", type=int, default=None,
                   help="k past frames per context (and target) stack (default 1, or enough "
                        "for --latent-dim with a linear encoder)")
    p.add_argument("--horizon", type=int, default=None,
                   help="Δ: predict the stack Δ steps ahead (default 1)")
    p.add_argument("--val-frac", type=float, default=None,
                   help="validation fraction, by episode or by time (default 0.1)")
    p.add_argument("--test-frac", type=float, default=None,
                   help="test fraction held out for `bjepa diagnose` (default 0.1)")
    p.add_argument("--split", choices=["auto", "episode", "time"], default=None,
                   help="split by whole episodes or in time (default auto: by episode when "
                        "there are enough)")
    p.add_argument("--latent-dim", type=int, default=None, help="latent size (default 4)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="reader processes when streaming from disk (default 0)")
    p.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                   help="read mini-batches from disk (auto: when the data exceed 512 MiB)")


def load_options(args: argparse.Namespace, stored: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The load options from the command line, falling back to ``stored`` ones."""
    stored = dict(stored or {})
    given = {"columns": args.columns, "time_col": args.time_col,
             "episode_col": args.episode_col, "missing": args.missing, "key": args.key,
             "size": list(args.frame_size) if args.frame_size else None,
             "grayscale": args.grayscale, "crop": list(args.crop) if args.crop else None}
    out = {k: (given[k] if given[k] is not None else stored.get(k)) for k in LOAD_KEYS}
    out["missing"] = out["missing"] or "raise"
    out["grayscale"] = bool(out["grayscale"])
    return out


def read_sequences(path: str | Path, opts: dict[str, Any]) -> Any:
    """:class:`~bjepa.data.Sequences` from ``path`` with stored/CLI load options."""
    from bjepa.data.pairs import load_with_options

    return load_with_options(path, opts)


# -- train ----------------------------------------------------------------------------------------
def _config(args: argparse.Namespace, stored: dict[str, Any] | None) -> dict[str, Any]:
    given = {"model": args.model, "seed": args.seed, "steps": args.steps, "lr": args.lr,
             "batch_size": args.batch_size, "beta": args.beta, "tau": args.tau,
             "encoder": args.encoder, "latent_dim": args.latent_dim,
             "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
             "device": args.device, "progress": not args.no_progress,
             "weight_prior": getattr(args, "weight_prior", None)}
    pair_given = {"context_frames": args.context_frames, "horizon": args.horizon,
                  "val_frac": args.val_frac, "test_frac": args.test_frac, "split": args.split}
    if stored is not None:
        from bjepa.cli._common import resolve_resumed_config

        keep = {k: v for k, v in stored.items() if k in DEFAULTS or k in pair_given}
        cfg = resolve_resumed_config(keep, {**given, **pair_given})
        cfg = {**DEFAULTS, **cfg}
        cfg["load"] = load_options(args, stored.get("load"))
        return cfg
    cfg = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    cfg.update({k: v for k, v in pair_given.items() if v is not None})
    cfg.setdefault("horizon", 1)
    cfg.setdefault("val_frac", 0.1)
    cfg.setdefault("test_frac", 0.1)
    cfg.setdefault("split", "auto")
    cfg["load"] = load_options(args)
    for name in ("steps", "latent_dim", "checkpoint_every", "log_every", "batch_size",
                 "context_frames", "horizon"):
        v = cfg.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if cfg["seed"] < 0:
        raise ValueError(f"--seed must be >= 0, got {cfg['seed']}")
    return cfg


def _auto_frames(cfg: dict[str, Any], frame_dim: int) -> int:
    """``--context-frames`` when not given: 1, or with a linear encoder just enough stacked
    frames for ``latent_dim`` (a linear map of D values has at most D useful latents)."""
    if cfg.get("context_frames") is not None:
        return int(cfg["context_frames"])
    if cfg["encoder"] == "linear" and cfg["latent_dim"] > frame_dim:
        k = math.ceil(cfg["latent_dim"] / frame_dim)
        print(f"note: latent_dim {cfg['latent_dim']} > {frame_dim} feature(s) per frame: each "
              f"context stacks {k} frames (pass --context-frames or --latent-dim to choose)")
        return k
    return 1


def build_model(cfg: dict[str, Any], obs_dim: int) -> Any:
    """The run's model from the registry (:mod:`bjepa.models.registry`)."""
    from bjepa.models.registry import build_model as build

    extra = {}
    if cfg.get("weight_prior") is not None:  # BJEPA with a weight posterior
        if cfg["model"] != "bjepa":
            raise ValueError(f"--weight-prior applies to --model bjepa only, not {cfg['model']}")
        extra["weight_prior"] = cfg["weight_prior"]
    return build(cfg["model"], obs_dim, cfg["latent_dim"],
                 settings={"encoder": cfg["encoder"], "beta": cfg["beta"], "tau": cfg["tau"]},
                 **extra)


def _subset(pairs: Any, limit: int) -> Any:
    import numpy as np
    import torch

    n = len(pairs)
    idx = np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).astype(np.int64)
    ctx, tgt, act = pairs.batch(idx)
    if act is not None:
        ctx = np.concatenate([ctx, act], axis=1)
    return torch.from_numpy(ctx), torch.from_numpy(tgt)


def train(args: argparse.Namespace, ctx: Any) -> int:
    """Train on ``args.data`` (a file or folder) and write the run folder."""
    from bjepa.data.pairs import load_pairs
    from bjepa.inference.checkpoint import CheckpointError, save_checkpoint
    from bjepa.inference.distributed import agree, broadcast
    from bjepa.inference.fit import NonFiniteLossError, fit, set_seed
    from bjepa.runs import RunFolder, default_run_dir

    rank0 = ctx.rank == 0
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run folder to continue)")
    path = Path(args.data).expanduser().resolve()
    stored = None
    if args.resume and (Path(args.out) / "config.json").exists():
        import json

        stored = json.loads((Path(args.out) / "config.json").read_text())
    cfg = _config(args, stored)
    # 1. the data and the model are validated before the run folder is touched
    seqs = read_sequences(path, cfg["load"])
    cfg["context_frames"] = _auto_frames(cfg, seqs.dim)
    data = load_pairs(seqs, context_frames=cfg["context_frames"], horizon=cfg["horizon"],
                      val_frac=cfg["val_frac"], test_frac=cfg["test_frac"], split=cfg["split"],
                      seed=cfg["seed"])
    set_seed(cfg["seed"])
    model = build_model(cfg, data.obs_dim)
    model.standardizer = data.standardizer
    probe_ctx, probe_tgt = _subset(data.train, 8)
    model.check_inputs(probe_ctx, probe_tgt)  # latent_dim vs obs_dim, widths: refused now
    n_train = len(data.train)
    batch = cfg["batch_size"] or (None if n_train <= AUTO_BATCH else AUTO_BATCH)
    nbytes = 2 * n_train * data.obs_dim * 4
    stream = args.stream == "on" or (args.stream == "auto" and nbytes > STREAM_BYTES)
    if stream and batch is None:
        batch = min(AUTO_BATCH, n_train)
    if stream and args.strategy == "ddp":
        raise ValueError("--strategy ddp does not stream from disk yet; pass --stream off (each "
                         "process then holds the data in memory)")
    cfg.update(data=str(path), batch_size=batch, stream=stream,
               strategy=args.strategy, world_size=ctx.world_size,
               frames=len(seqs), features=seqs.dim, episodes=seqs.num_episodes,
               columns=list(seqs.columns), pairs={"train": n_train,
                                                  "val": len(data.val) if data.val else 0,
                                                  "test": len(data.test) if data.test else 0})
    # 2. the run folder
    folder, setup, error = None, None, None
    if rank0:
        try:
            folder = RunFolder(args.out or default_run_dir("train"), overwrite=args.overwrite,
                               resume=args.resume)
            folder.write_json("config.json", cfg)
            if not args.resume:
                shutil.rmtree(folder.file("checkpoints"), ignore_errors=True)
            setup = str(folder.path)
        except Exception as err:  # noqa: BLE001 - every process fails together
            if folder is not None:
                folder.close()
            error = err
    agree(ctx, error)
    out = broadcast(ctx, setup)
    try:
        steps = cfg["steps"]
        if rank0:
            print(f"{'resuming' if args.resume else 'training'} {cfg['model']} on "
                  f"{data.describe()}\n{steps} steps, batch {batch or 'full'}"
                  f"{' streamed from disk' if stream else ''} → {out}")
        if stream:
            train_data: tuple[Any, ...] = (data.train.loader(
                batch, seed=cfg["seed"], num_workers=args.num_workers,
                standardizer=data.standardizer),)  # fit feeds loader batches to the model as is
            fit_batch = None
        else:
            train_data = data.train.tensors()
            fit_batch = batch
        held = data.val if data.val is not None else None
        try:
            hist = fit(model, *train_data, steps=steps, lr=cfg["lr"], batch_size=fit_batch,
                       seed=cfg["seed"], device=cfg["device"], progress=cfg["progress"] and rank0,
                       log_every=cfg["log_every"] or max(steps // 100, 1),
                       val=None if held is None else _subset(held, MAX_VAL_ROWS),
                       metrics_path=f"{out}/metrics.jsonl",
                       metrics_tags={"model": cfg["model"], "data": path.name,
                                     "seed": cfg["seed"]},
                       checkpoint_dir=f"{out}/checkpoints",
                       checkpoint_every=cfg["checkpoint_every"] or max(steps // 10, 50),
                       keep_last=2, resume=args.resume, strategy=cfg["strategy"])
        except (CheckpointError, NonFiniteLossError) as err:
            if rank0:
                print(f"bjepa train: error: {err}", file=sys.stderr)
            return 2
        if not rank0:
            return 0
        row = _results(model, data, hist, cfg, ctx.world_size)
        meta = {"data": "file", "path": str(path), "load": cfg["load"],
                "pairs": {k: cfg[k] for k in PAIR_KEYS}, "row": row}
        save_checkpoint(f"{out}/model.pt", model, meta=meta)
        folder.write_json("results.json", row)
        figures = write_figures(Path(out), model, data, hist)
        print(f"final loss {row['final_loss']:.4g}"
              + (f", validation loss {row['val_loss']:.4g}" if row.get("val_loss") is not None
                 else "")
              + (f", held-out predictive information {row['predictive_information']:.3f} nats"
                 if row.get("predictive_information") is not None else "")
              + f"; {row['steps_per_second']:.1f} steps/s\nwrote {out}/: config.json "
              f"metrics.jsonl checkpoints/ model.pt results.json {' '.join(figures)}")
        return 0
    finally:
        if folder is not None:
            folder.close()


def _results(model: Any, data: Any, hist: Any, cfg: dict[str, Any], world: int
             ) -> dict[str, Any]:
    import torch

    recs = [r for r in hist.records if r.get("val_loss") is not None]
    rate = float("nan")
    if len(hist.records) >= 2 and hist.records[-1]["seconds"] > hist.records[0]["seconds"]:
        rate = (hist.records[-1]["step"] - hist.records[0]["step"]) / (
            hist.records[-1]["seconds"] - hist.records[0]["seconds"])
    held = data.test if data.test is not None else data.val
    info = None
    if held is not None and hasattr(model, "selection_score") \
            and getattr(model, "target_encoder", None) is not None:
        ctx, tgt = _subset(held, MAX_VAL_ROWS)
        dev = next(model.parameters()).device
        with torch.no_grad():
            info = float(model.selection_score(ctx.to(dev), tgt.to(dev)))
    rows = cfg["batch_size"] or len(data.train)
    return {"model": cfg["model"], "data": cfg["data"], "seed": cfg["seed"],
            "final_loss": hist.final_loss, "val_loss": recs[-1]["val_loss"] if recs else None,
            "predictive_information": info,
            "held_out": "test" if data.test is not None else ("val" if data.val else None),
            "steps": cfg["steps"], "train_seconds": round(hist.seconds, 3),
            "steps_per_second": rate, "samples_per_second": rate * rows,
            "stream": cfg["stream"], "strategy": cfg["strategy"], "world_size": world,
            "resumed_from": hist.resumed_from}


# -- figures --------------------------------------------------------------------------------------
def write_figures(out: Path, model: Any, data: Any, hist: Any) -> list[str]:
    """``figures/loss.png`` (training and validation loss) and, for models with a latent
    predictive, ``figures/latents.png`` (prediction ± 2 sd against the target encoder's latent
    on the held-out data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    steps = [r["step"] for r in hist.records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in hist.records], label="training (per row)")
    val = [(r["step"], r["val_loss"]) for r in hist.records if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), label="validation (per row)")
    ax.set_xlabel("step")
    ax.set_ylabel("negative ELBO")
    ax.set_title(f"{type(model).__name__} on {Path(data.train.seqs.source).name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=120)
    plt.close(fig)
    written.append("figures/loss.png")
    held = data.test if data.test is not None else (data.val or data.train)
    if not (hasattr(model, "predict") and hasattr(model, "encode_target")):
        return written
    a, b = held.segments[0]
    n = min(len(held), int(b - a - held.k - held.horizon + 1), 400)
    ctx, tgt = _subset_first(held, n)
    dev = next(model.parameters()).device
    with torch.no_grad():
        pred = model.predict(ctx.to(dev))
        mean, sd = pred.mean.cpu().numpy(), pred.variance.sqrt().cpu().numpy()
        obs = model.encode_target(tgt.to(dev)).cpu().numpy()
    dims = min(mean.shape[1], 4)
    fig, axes = plt.subplots(dims, 1, figsize=(7, 1.8 * dims + 0.6), sharex=True, squeeze=False)
    t = np.arange(n)
    for j in range(dims):
        axj = axes[j, 0]
        axj.fill_between(t, mean[:, j] - 2 * sd[:, j], mean[:, j] + 2 * sd[:, j], alpha=0.3,
                         label="predicted ± 2 sd")
        axj.plot(t, mean[:, j], lw=1)
        axj.plot(t, obs[:, j], "k.", ms=2, label="target encoder latent")
        axj.set_ylabel(f"z{j}")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel(f"pair (held out: {held.labels[0]})")
    fig.suptitle(f"next latent ({held.horizon} step(s) ahead) on held-out data", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "latents.png", dpi=120)
    plt.close(fig)
    written.append("figures/latents.png")
    return written


def _subset_first(pairs: Any, n: int) -> Any:
    import numpy as np
    import torch

    ctx, tgt, act = pairs.batch(np.arange(n))
    if act is not None:
        ctx = np.concatenate([ctx, act], axis=1)
    return torch.from_numpy(ctx), torch.from_numpy(tgt)


# -- encode / predict on new data -----------------------------------------------------------------
def open_run(run_dir: str, device: str = "cpu") -> tuple[Any, dict[str, Any], Path]:
    """The trained model of a run folder (or checkpoint) and its checkpoint's ``meta``."""
    from bjepa.inference.checkpoint import find_latest_checkpoint, load_checkpoint, load_model

    path = find_latest_checkpoint(run_dir)
    meta = dict(load_checkpoint(path).get("meta") or {})
    model = load_model(path, map_location=device)
    model.eval()
    return model, meta, path


def read_new_data(args: argparse.Namespace, model: Any, meta: dict[str, Any]
                  ) -> tuple[Any, int, int]:
    """``(sequences, context_frames, horizon)`` of ``args.data`` read like the run's data."""
    seqs = read_sequences(Path(args.data).expanduser(), load_options(args, meta.get("load")))
    pairs = dict(meta.get("pairs") or {})
    k, horizon = int(pairs.get("context_frames", 1)), int(pairs.get("horizon", 1))
    if seqs.dim * k != model.obs_dim:
        used = (meta.get("load") or {}).get("columns")
        raise ValueError(
            f"{args.data} has {seqs.dim} feature(s) per frame, so stacks of {k} frame(s) have "
            f"{seqs.dim * k} values, but the model reads {model.obs_dim}; read the same columns "
            f"as in training{f' (--columns {chr(44).join(used)})' if used else ''}")
    return seqs, k, horizon


def context_chunks(seqs: Any, k: int, chunk: int = 65536):
    """``(episode, rows, stacks)`` for every frame with ``k − 1`` predecessors in its episode:
    ``rows`` are the frames' row numbers, ``stacks`` ``(len(rows), k × D)`` float32, read
    ``chunk`` rows at a time (a memory map is never read whole)."""
    import numpy as np

    from bjepa.data.pairs import stack_frames

    for e in range(seqs.num_episodes):
        a, b = int(seqs.starts[e]), int(seqs.starts[e + 1])
        for s in range(a + k - 1, b, chunk):
            stop = min(s + chunk, b)
            block = np.asarray(seqs.values[s - k + 1:stop], dtype=np.float32)
            yield seqs.episode_ids[e], np.arange(s, stop), stack_frames(block, k)
