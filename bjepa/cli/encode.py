"""``bjepa encode RUN_DIR --data PATH --out latents.npy``: latents of new data from a trained run.

The data are read like the run's training data (same columns, time and episode columns,
missing-value policy, frame stacks; override them with the flags below) and standardised by the
model itself. Row ``i`` of the output is the latent of input frame ``i`` (after sorting by time
and episode), ``NaN`` for the first ``k − 1`` frames of each episode, which have no full stack.
With an ``.npz`` output the episode id of each row is saved too (``episode``).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from bjepa.cli._own_data import add_load_args

    p = sub.add_parser("encode", help="latents of new data from a trained run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder or a .pt checkpoint")
    p.add_argument("--data", required=True, help="a data file or folder, read like the run's")
    p.add_argument("--out", required=True, help="output .npy (latents) or .npz (with episode)")
    p.add_argument("--target", action="store_true",
                   help="use the EMA target encoder μ_θ'(x) instead of the context encoder")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    add_load_args(p, defaults_from_run=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from bjepa._io import atomic_write
    from bjepa.cli._own_data import context_chunks, open_run, read_new_data

    out = Path(args.out)
    if out.suffix not in (".npy", ".npz"):
        raise ValueError(f"--out must end in .npy or .npz, got {out.name}")
    model, meta, ckpt = open_run(args.run_dir, args.device)
    seqs, k, _ = read_new_data(args, model, meta)
    fn = model.encode
    if args.target:
        if not hasattr(model, "encode_target"):
            raise ValueError(f"a {type(model).__name__} has no target encoder; drop --target")
        fn = model.encode_target
    latents = np.full((len(seqs), model.latent_dim), np.nan, dtype=np.float32)
    episode = np.empty(len(seqs), dtype=object)
    for e in range(seqs.num_episodes):
        episode[seqs.starts[e]:seqs.starts[e + 1]] = seqs.episode_ids[e]
    dev = next(model.parameters()).device
    with torch.no_grad():
        for _, rows, stacks in context_chunks(seqs, k):
            latents[rows] = fn(torch.from_numpy(stacks).to(dev)).cpu().numpy()
    if out.suffix == ".npy":
        atomic_write(out, lambda tmp: np.save(tmp, latents), suffix=".npy")
    else:
        atomic_write(out, lambda tmp: np.savez(tmp, latents=latents,
                                               episode=episode.astype(str)), suffix=".npz")
    done = int(np.isfinite(latents[:, 0]).sum())
    print(f"encoded {done} of {len(seqs)} frames of {args.data} ({seqs.num_episodes} "
          f"episode(s), stacks of {k}) with {type(model).__name__} from {ckpt} → {out} "
          f"{latents.shape}")
    return 0
