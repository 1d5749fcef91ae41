"""``bjepa diagnose RUN_DIR``: can a trained world model's uncertainty be trusted?

For each model checkpoint in RUN_DIR (``checkpoints/*.pt`` as written by ``bjepa noisy-tv``, or
``*.pt``), rebuilds its held-out data from the checkpoint's record and writes
RUN_DIR/diagnostics/<checkpoint>/: diagnostics.json, inference_data.nc (ArviZ, NetCDF),
calibration.png, collapse.png and report.md, plus RUN_DIR/diagnostics/summary.md. A checkpoint
that cannot be read or diagnosed is listed in the summary and the others are diagnosed (exit
code 1 then); --checkpoint updates that checkpoint's row of an existing summary.

--compare then ranks the diagnosed models with ArviZ's az.compare (PSIS-LOO), but only those
whose log-likelihoods score the same observed values (e.g. heads or weight priors over one
frozen encoder); the others are refused with the reason. Writes compare.csv, compare.md and
compare.png next to summary.md.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="calibration, collapse and ArviZ diagnostics of a run's "
                                        "checkpoints", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a run folder (e.g. from `bjepa noisy-tv --out DIR`) or one .pt file")
    p.add_argument("--checkpoint", default=None,
                   help="diagnose only this checkpoint (file name or stem, e.g. "
                        "vjepa-sigma8-seed0)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/diagnostics)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="data split to diagnose on (default: the held-out test split)")
    p.add_argument("--num-samples", type=int, default=100,
                   help="posterior draws stored in inference_data.nc (default 100)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="diagnose only the first N (context, target) pairs")
    p.add_argument("--psis-particles", type=int, default=1000,
                   help="particles for the guide's PSIS k̂ (models with global latents)")
    p.add_argument("--tolerance", type=float, default=0.03,
                   help="coverage deviation accepted as calibrated (default 0.03)")
    p.add_argument("--seed", type=int, default=0, help="seed for the posterior draws")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--chains", type=int, default=1,
                   help="models with a weight posterior: refit it K times from dispersed "
                        "starts with independent seeds (encoders frozen) and store one chain "
                        "per refit, so R-hat and ESS are defined (default 1)")
    p.add_argument("--chain-steps", type=int, default=500,
                   help="SVI steps of each refit (default 500)")
    p.add_argument("--compare", action="store_true",
                   help="also rank the diagnosed models with az.compare (only those that score "
                        "one observed space)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from bjepa.diagnostics.runs import compare_runs, diagnose_run, format_summary, summary_rows

    failures: list = []
    results = diagnose_run(args.run_dir, checkpoint=args.checkpoint, out=args.out,
                           split=args.split, num_samples=args.num_samples,
                           max_rows=args.max_rows, seed=args.seed,
                           psis_particles=args.psis_particles, tolerance=args.tolerance,
                           device=args.device, failures=failures, chains=args.chains,
                           chain_steps=args.chain_steps)
    if results:
        print(format_summary(summary_rows(results)))
    for diag, _ in results:
        if diag.reasons:
            print(f"\n{diag.name}: {diag.verdict}")
            for reason in diag.reasons:
                print(f"  - {reason}")
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else \
        (run_dir.parent if run_dir.is_file() else run_dir) / "diagnostics"
    for f in failures:
        print(f"\n{f.name}: NOT DIAGNOSED — {f.error}", file=sys.stderr)
    print(f"\nwrote {out}/: summary.md, summary.json and per checkpoint diagnostics.json "
          "inference_data.nc calibration.png collapse.png report.md")
    if args.compare:
        try:
            cmp = compare_runs(out)
        except ValueError as err:
            print(f"\n--compare: {err}", file=sys.stderr)
            return 2
        print(f"\naz.compare of {', '.join(cmp['compared'])}:\n{cmp['table'].to_string()}")
        for name, reason in cmp["refused"].items():
            print(f"  not compared: {name} — {reason}")
        print(f"wrote {', '.join(p.name for p in cmp['files'].values())} in {out}/")
    if failures and not results:
        return 2
    return 1 if failures else 0
