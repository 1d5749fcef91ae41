"""Files that plain ArviZ reads: three weight priors over one frozen encoder, each with four
chains, checked and compared with ArviZ's own functions and plots (no bjepa code after the
files are written).

1. Train one BJEPA (normal weight prior) on Noisy TV.
2. Copy its encoders into BJEPAs with a Laplace and a hierarchical (half-Cauchy scale) weight
   prior, so all three score the *same* target latents.
3. For each, refit the weight posterior from four random starts with independent seeds
   (``weight_posterior_chains``) and export the test split as ``<prior>.nc``: four chains, so
   ``az.summary`` reports R-hat and ESS.
4. With ArviZ alone: ``az.loo``, ``az.loo_pit``, ``az.summary``, ``az.compare`` and the figures
   ``plot_loo_pit.png``, ``plot_ppc.png``, ``plot_compare.png`` (ArviZ's plotting).

    python examples/plain_arviz.py --quick
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from bjepa.data import noisy_tv
from bjepa.diagnostics import save_inference_data, to_inference_data
from bjepa.inference import fit
from bjepa.inference.weights import weight_posterior_chains
from bjepa.models import BJEPA
from bjepa.priors import HierarchicalWeightPrior

#: the quickest flags, used by tests/test_cli_examples.py
QUICK_ARGS = ["--quick", "--num-steps", "30", "--chain-steps", "15", "--num-samples", "30"]

PRIORS = {"normal": "normal", "laplace": "laplace",
          "hierarchical": HierarchicalWeightPrior(1.0)}


def write_files(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    torch.manual_seed(args.seed)
    train, test = noisy_tv.make_split(args.sigma, args.seed,
                                      train_steps=300 if args.quick else 4000,
                                      test_steps=120 if args.quick else 1000)
    base = BJEPA(20, 4, weight_prior="normal", init="cca")
    hist = fit(base, train.obs[:-1], train.obs[1:], steps=args.num_steps, lr=1e-2,
               seed=args.seed, progress=not args.quick)
    trace = ([r["step"] for r in hist.records], hist.loss)
    shared = {k: v for k, v in base.state_dict().items()
              if not k.startswith(("predictor.", "weight_guide.", "weight_hyper."))}
    files = {}
    rows = min(len(train) - 1, 1000)
    for name, prior in PRIORS.items():
        model = base if name == "normal" else BJEPA(20, 4, weight_prior=prior)
        if model is not base:
            missing = model.load_state_dict(shared, strict=False)
            assert not missing.unexpected_keys, missing.unexpected_keys
        chains = weight_posterior_chains(model, train.obs[:rows], train.obs[1:rows + 1],
                                         num_chains=4, steps=args.chain_steps,
                                         seed=args.seed)
        idata = to_inference_data(chains, test.obs[:-1], test.obs[1:],
                                  num_samples=args.num_samples, loss_trace=[trace] * 4)
        files[name] = save_inference_data(idata, out / f"{name}.nc")
    return files


def plain_arviz(files: dict[str, Path], out: Path) -> dict:
    """Only ArviZ from here on."""
    import arviz as az
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: az.from_netcdf(path) for name, path in files.items()}
    idata = data["normal"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata, var_name="z_target_joint")
        pit = az.loo_pit(idata, y="z_target")
        summary = az.summary(idata, var_names=["predictor_net_weight"],
                             coords={"predictor_net_weight_dim_0": [0, 1]})
        table = az.compare(data, var_name="z_target_joint")
        print(loo, "\n")
        print("az.loo_pit(idata, y='z_target'): shape", tuple(pit.shape), "mean per dim",
              [round(float(v), 3) for v in np.asarray(pit).mean(0)], "\n")
        print(summary.to_string(), "\n")
        print(table.to_string(), "\n")
        if hasattr(az, "plot_loo_pit"):
            axes = az.plot_loo_pit(idata, y="z_target", ecdf=True)
            fig = (axes.ravel()[0] if hasattr(axes, "ravel") else axes).get_figure()
            fig.set_size_inches(9, 3.2)
            fig.suptitle("az.plot_loo_pit(idata, y='z_target', ecdf=True)")
            fig.savefig(out / "plot_loo_pit.png", dpi=110, bbox_inches="tight")
            plt.close("all")
            axes = az.plot_ppc(idata, var_names=["z_target"], num_pp_samples=50,
                               flatten=["time"], random_seed=0)
            fig = (axes.ravel()[0] if hasattr(axes, "ravel") else axes).get_figure()
            fig.set_size_inches(12, 3.2)
            fig.savefig(out / "plot_ppc.png", dpi=110, bbox_inches="tight")
            plt.close("all")
            ax = az.plot_compare(table, insample_dev=False, figsize=(7, 2.6))
            ax.get_figure().savefig(out / "plot_compare.png", dpi=110, bbox_inches="tight")
            plt.close("all")
    return {"loo": loo, "pit": pit, "summary": summary, "compare": table}


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = write_files(args, out)
    res = plain_arviz(files, out)
    print(f"wrote {', '.join(p.name for p in sorted(out.glob('*.nc')))} and the figures in "
          f"{out}/")
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-steps", type=int, default=600,
                        help="training steps of the shared model")
    parser.add_argument("--chain-steps", type=int, default=400,
                        help="SVI steps of each chain's weight-posterior refit")
    parser.add_argument("--num-samples", type=int, default=250, help="draws per chain")
    parser.add_argument("--out", default="runs/plain-arviz")
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args())
