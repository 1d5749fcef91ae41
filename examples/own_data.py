"""Your own data, end to end: load → train → diagnose → load back in a fresh process → predict.

Two real data sets that ship inside packages (see docs/own_data.md):

- **macro** — statsmodels' US macroeconomic series (203 quarters, 1959–2009), written as a CSV
  with a date column: quarterly growth rates (%) of real GDP, consumption, investment,
  government spending and disposable income, with unemployment, inflation and the interest
  rates. Two quarters per context, one quarter ahead; the last quarters are held out in time.
- **digits** — scikit-learn's 8×8 handwritten digits arranged as a video (a GIF): the digit
  shown counts 0, 1, …, 9, 0, … and each frame is a different person's handwriting of it. A
  good world model encodes *which digit* is shown (the predictable part) and not the
  handwriting (unpredictable); the example checks both with a linear probe of the latents.

Everything goes through the same public entry points a user would use: ``bjepa train --data``
(in Python, :func:`bjepa.cli.main`), :func:`bjepa.diagnostics.diagnose_run`, a fresh Python
process calling :func:`bjepa.inference.checkpoint.load_model` on the run folder with *raw*
data, and ``bjepa predict``.

    python examples/own_data.py --quick
    python examples/own_data.py --num-steps 3000 --out runs/own_data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from bjepa.cli import main as bjepa

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--num-steps", "40"]

MACRO_RATES = ["realgdp", "realcons", "realinv", "realgovt", "realdpi"]
MACRO_LEVELS = ["unemp", "infl", "tbilrate", "realint"]


# -- 1. data files -------------------------------------------------------------------------------
def write_macro_csv(path: Path) -> list[str]:
    """statsmodels' macrodata as a CSV with a ``date`` column; returns the feature columns."""
    from statsmodels.datasets import macrodata

    df = macrodata.load_pandas().data
    out = df[["year", "quarter"]].astype(int).astype(str).agg("-Q".join, axis=1).to_frame("date")
    for col in MACRO_RATES:  # quarter-on-quarter growth in %, the series are trending
        out[f"{col}_growth"] = 100 * np.log(df[col]).diff()
    for col in MACRO_LEVELS:
        out[col] = df[col]
    out = out.iloc[1:]  # the first quarter has no growth rate
    out.sample(frac=1.0, random_state=0).to_csv(path, index=False)  # shuffled rows: --time-col
    return [c for c in out.columns if c != "date"]


def write_digits_video(path: Path, frames: int, seed: int) -> np.ndarray:
    """A GIF whose frame ``t`` shows digit ``t mod 10`` in a random writer's hand; returns the
    digit of each frame."""
    import imageio.v3 as iio
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    labels = np.arange(frames) % 10
    pick = [rng.choice(np.flatnonzero(digits.target == d)) for d in labels]
    images = (digits.images[pick] / 16.0 * 255).astype(np.uint8)  # (T, 8, 8) grey
    iio.imwrite(path, images, duration=100, loop=0)
    return labels


# -- 2. train, diagnose, reload, predict ---------------------------------------------------------
def run_case(name: str, data: Path, flags: list[str], out: Path, steps: int) -> dict:
    run_dir = out / name
    rc = bjepa(["train", "--data", str(data), *flags, "--steps", str(steps), "--no-progress",
                "--out", str(run_dir), "--overwrite"])
    if rc != 0:
        raise SystemExit(f"bjepa train --data {data} failed ({rc})")
    from bjepa.diagnostics.runs import diagnose_run, format_summary, summary_rows

    quick = steps < 300
    diag = diagnose_run(run_dir, num_samples=20 if quick else 100,
                        psis_particles=50 if quick else 200)
    print(format_summary(summary_rows(diag)))
    results = json.loads((run_dir / "results.json").read_text())
    results["verdict"] = diag[0][0].verdict
    results["calibration"] = diag[0][0].calibration.verdict if diag[0][0].calibration else None
    results["run_dir"] = str(run_dir)
    return results


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from bjepa.data import load, stack_frames
    from bjepa.inference.checkpoint import load_model

    run_dir, data, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = load_model(run_dir)                     # standardiser included
    cfg = json.load(open(f"{run_dir}/config.json"))
    seqs = load(data, **opts)                       # raw values, as on disk
    x = torch.as_tensor(stack_frames(seqs.episode(0), cfg["context_frames"]),
                        dtype=torch.float32)
    pred = model.predict(x[-5:])
    print(json.dumps({"mean": pred.mean.tolist(), "sd": pred.variance.sqrt().tolist(),
                      "standardizer": repr(model.standardizer)}))
""")


def reload_in_fresh_process(run_dir: Path, data: Path, opts: dict) -> dict:
    """Load the run in a new Python process and predict the last five contexts of raw data."""
    done = subprocess.run([sys.executable, "-c", FRESH, str(run_dir), str(data),
                           json.dumps(opts)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"reloading {run_dir} in a fresh process failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def predict_file(run_dir: Path, data: Path, out: Path) -> Path:
    nc = out / f"{run_dir.name}_predictive.nc"
    if bjepa(["predict", str(run_dir), "--data", str(data), "--out", str(nc)]) != 0:
        raise SystemExit(f"bjepa predict {run_dir} failed")
    return nc


def digit_probe(run_dir: Path, video: Path, labels: np.ndarray, out: Path) -> dict:
    """Linear-probe accuracy of the digit from the latents (train on the first 80 % of frames,
    test on the rest): from ``encode`` (the digit shown) and from the predicted next latent
    (the digit to come)."""
    import xarray as xr
    from sklearn.linear_model import LogisticRegression

    z_path = out / "digits_latents.npy"
    if bjepa(["encode", str(run_dir), "--data", str(video), "--out", str(z_path)]) != 0:
        raise SystemExit("bjepa encode failed")
    z = np.load(z_path)
    ds = xr.open_dataset(predict_file(run_dir, video, out), engine="h5netcdf")
    rows, mean = ds["row"].values, ds["mean"].values
    ds.close()
    cut = int(0.8 * len(labels))

    def accuracy(feats: np.ndarray, y: np.ndarray, idx: np.ndarray) -> float:
        tr, te = idx[idx < cut], idx[idx >= cut]
        clf = LogisticRegression(max_iter=2000).fit(feats[tr], y[tr])
        return float(clf.score(feats[te], y[te]))

    ok = np.flatnonzero(np.isfinite(z).all(1))
    nxt = rows + 1 < len(labels)
    return {"digit_now_accuracy": accuracy(z, labels, ok),
            "digit_next_accuracy": accuracy(mean[nxt], labels[rows[nxt] + 1],
                                            rows[nxt]),
            "chance": 0.1}


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.num_steps or (300 if args.quick else 2000)
    summary: dict = {}

    # macro: a table with a date column (rows shuffled on disk), split in time
    csv = out / "macro.csv"
    columns = write_macro_csv(csv)
    macro_flags = ["--columns", ",".join(columns), "--time-col", "date", "--missing", "raise",
                   "--context-frames", "2", "--val-frac", "0.1", "--test-frac", "0.15",
                   "--seed", str(args.seed)]
    summary["macro"] = run_case("macro", csv, macro_flags, out, steps)
    fresh = reload_in_fresh_process(out / "macro", csv, {"columns": columns,
                                                         "time_col": "date"})
    import xarray as xr

    with xr.open_dataset(predict_file(out / "macro", csv, out), engine="h5netcdf") as pred:
        diff = float(np.abs(pred["mean"].values[-5:] - np.array(fresh["mean"])).max())
    summary["macro"]["fresh_process_max_abs_diff"] = diff  # same numbers in both processes
    summary["macro"]["standardizer"] = fresh["standardizer"]

    # digits: a video file, frames flattened to 64 grey values
    frames = 200 if args.quick else 1500
    video = out / "digits.gif"
    labels = write_digits_video(video, frames, args.seed)
    digit_flags = ["--grayscale", "--latent-dim", "8", "--batch-size", "256", "--val-frac", "0.1",
                   "--test-frac", "0.1", "--split", "time", "--seed", str(args.seed)]
    summary["digits"] = run_case("digits", video, digit_flags, out, steps)
    summary["digits"].update(digit_probe(out / "digits", video, labels, out))

    for name, row in summary.items():
        print(f"\n{name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in row.items()
                                        if k not in ("run_dir", "data", "standardizer")))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nwrote {out}/: macro/ digits/ (run folders with figures/ and diagnostics/), "
          "*_predictive.nc, digits_latents.npy, summary.json")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=None,
                        help="optimiser steps per model (default 2000; --quick: 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/own_data", help="output folder")
    parser.add_argument("--quick", action="store_true", help="fewer frames and steps")
    main(parser.parse_args())
