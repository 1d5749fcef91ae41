"""``bjepa predict RUN_DIR --data PATH --out predictive.nc``: the predicted distribution of the
next latent for every context of new data.

Writes a NetCDF file (xarray/ArviZ readable) with, per context row (its last frame's row number
``row``, its ``episode``) and latent dimension: ``mean`` and ``sd`` of the predictive
``p(z_{t+Δ} | x_{≤t})``, and ``observed`` — the target encoder's latent of the frames Δ steps
later where the data have them (``NaN`` past an episode's end), so predictions can be checked.
The data are read and standardised like the run's training data.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from bjepa.cli._own_data import add_load_args

    p = sub.add_parser("predict", help="predictive distribution of the next latent on new data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder or a .pt checkpoint")
    p.add_argument("--data", required=True, help="a data file or folder, read like the run's")
    p.add_argument("--out", required=True, help="output NetCDF file (.nc)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    add_load_args(p, defaults_from_run=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    import xarray as xr

    from bjepa._io import atomic_write
    from bjepa.cli._own_data import context_chunks, open_run, read_new_data

    out = Path(args.out)
    if out.suffix != ".nc":
        raise ValueError(f"--out must be a NetCDF file ending in .nc, got {out.name}")
    model, meta, ckpt = open_run(args.run_dir, args.device)
    name = type(model).__name__
    if not (hasattr(model, "predict") or hasattr(model, "predict_mean")):
        raise ValueError(f"a {name} predicts frames, not latents; use `bjepa encode` (or a "
                         "VJEPA/BJEPA/JEPA run)")
    seqs, k, horizon = read_new_data(args, model, meta)
    dev = next(model.parameters()).device
    parts: dict[str, list] = {"row": [], "episode": [], "mean": [], "sd": [], "observed": []}
    ends = {seqs.episode_ids[e]: int(seqs.starts[e + 1]) for e in range(seqs.num_episodes)}
    values = seqs.values
    with torch.no_grad():
        for ep, rows, stacks in context_chunks(seqs, k):
            ctx = torch.from_numpy(stacks).to(dev)
            if hasattr(model, "predict"):
                pred = model.predict(ctx)
                mean, sd = pred.mean, pred.variance.sqrt()
            else:
                mean = model.predict_mean(ctx)
                sd = torch.full_like(mean, float("nan"))
            obs = np.full(tuple(mean.shape), np.nan, dtype=np.float32)
            has = rows + horizon < ends[ep]
            if has.any() and hasattr(model, "encode_target"):
                t = rows[has] + horizon
                idx = (t[:, None] + np.arange(-k + 1, 1)).reshape(-1)
                tgt = np.asarray(values[idx], dtype=np.float32).reshape(len(t), -1)
                obs[has] = model.encode_target(torch.from_numpy(tgt).to(dev)).cpu().numpy()
            for key, v in (("row", rows), ("episode", [ep] * len(rows)),
                           ("mean", mean.cpu().numpy()), ("sd", sd.cpu().numpy()),
                           ("observed", obs)):
                parts[key].append(v)
    if not parts["row"]:
        raise ValueError(f"{args.data} has no episode with {k} frames to make one context")
    cat = {key: np.concatenate([np.asarray(v) for v in vs]) for key, vs in parts.items()}
    ds = xr.Dataset(
        {"mean": (("row", "latent"), cat["mean"].astype(np.float32)),
         "sd": (("row", "latent"), cat["sd"].astype(np.float32)),
         "observed": (("row", "latent"), cat["observed"])},
        coords={"row": cat["row"], "latent": np.arange(cat["mean"].shape[1]),
                "episode": ("row", cat["episode"].astype(str))},
        attrs={"model": name, "checkpoint": str(ckpt), "data": str(args.data),
               "context_frames": k, "horizon": horizon,
               "description": "predictive p(z_{t+horizon} | x_{t-k+1..t}) per context row; "
                              "observed = target encoder latent of the frames horizon steps "
                              "later"})
    atomic_write(out, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"), suffix=".nc")
    print(f"predicted {len(cat['row'])} contexts of {args.data} with {name} from {ckpt} → "
          f"{out} (mean, sd, observed: {len(cat['row'])} × {cat['mean'].shape[1]})")
    return 0
