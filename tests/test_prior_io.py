"""Priors saved without pickle and loaded in a fresh process; weight-prior subclasses normalised
or refused; a structural prior conditioned on a per-row ``eta`` in training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from bjepa.inference import fit, load_model, save_checkpoint
from bjepa.inference.checkpoint import CheckpointError, find_latest_checkpoint
from bjepa.inference.fit import FusedSVI
from bjepa.models import BJEPA
from bjepa.priors import (
    EnergyPrior,
    GaussianPrior,
    GoalPrior,
    HierarchicalWeightPrior,
    HorseshoeWeightPrior,
    LaplaceWeightPrior,
    LatentPrior,
    MixturePrior,
    NormalWeightPrior,
    PriorError,
    StandardNormal,
    WeightPrior,
    build_prior,
    prior_spec,
    register_prior,
)

OBS, LAT = 6, 2

# a user's prior module, imported by both processes (a checkpoint never imports it itself)
CUSTOM = textwrap.dedent('''
    import torch
    from bjepa.priors import LatentPrior, WeightPrior, register_prior

    @register_prior("test_student_t")
    class StudentT(LatentPrior):
        def __init__(self, dim, df=3.0, scale=1.0):
            super().__init__(dim)
            self.df, self.scale = df, scale
            self.shift = torch.nn.Parameter(torch.zeros(dim))   # learnable state

        def log_prob(self, z, eta=None):
            d = torch.distributions.StudentT(self.df, self.shift, self.scale)
            return d.log_prob(z).sum(-1)

    @register_prior("test_scalar_laplace")
    class ScalarLaplace(WeightPrior):
        def __init__(self, b=0.5, **kw):
            super().__init__(**kw)
            self.b = b

        def site_dist(self, name, param):
            return torch.distributions.Laplace(0.0, self.b)    # scalar: expanded to the param
''')


def _energy(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z.pow(2).sum(-1)


def _cases(custom) -> dict[str, dict]:
    torch.manual_seed(3)
    return {
        "default": {},
        "standard_normal": {"prior": StandardNormal(LAT)},
        "gaussian_learnable": {"prior": GaussianPrior(LAT, 0.5, 2.0, learnable=True)},
        "gaussian_fixed": {"prior": GaussianPrior(LAT, torch.tensor([0.1, -0.2]), 0.7)},
        "goal": {"prior": GoalPrior(torch.tensor([1.0, -1.0]), 0.5)},
        "mixture": {"prior": MixturePrior(torch.randn(3, LAT), 0.7, torch.tensor([1., 2., 3.]))},
        "custom_latent": {"prior": custom.StudentT(LAT, df=4.0)},
        "normal_name": {"weight_prior": "normal"},
        "normal_obj": {"weight_prior": NormalWeightPrior(0.3, include=("weight",))},
        "laplace": {"weight_prior": LaplaceWeightPrior(0.4)},
        "horseshoe": {"weight_prior": HorseshoeWeightPrior(0.5)},
        "hierarchical_half_cauchy": {"weight_prior": HierarchicalWeightPrior(1.0)},
        "hierarchical_learned": {"weight_prior": HierarchicalWeightPrior(
            0.5, hyperprior="learned", per_tensor=True)},
        "custom_weight": {"weight_prior": custom.ScalarLaplace(0.2),
                          "prior": custom.StudentT(LAT)},
    }


def _predict(model: BJEPA, x: torch.Tensor) -> dict[str, list]:
    pyro.set_rng_seed(11)
    d = model.predict(x, num_samples=8)
    return {"mean": d.mean.tolist(), "variance": d.variance.tolist()}


@pytest.fixture(scope="module")
def custom_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "user_priors.py").write_text(CUSTOM)
    sys.path.insert(0, str(folder))
    try:
        import user_priors

        yield folder, user_priors
    finally:
        sys.path.remove(str(folder))


def _fresh_python(code: str, *paths: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*map(str, paths), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_every_prior_round_trips_in_a_fresh_process(tmp_path, custom_module):
    folder, custom = custom_module
    x = torch.randn(40, OBS)
    expected = {}
    for name, kw in _cases(custom).items():
        torch.manual_seed(0)
        model = BJEPA(OBS, LAT, **kw)
        fit(model, x[:-1], x[1:], steps=6, lr=0.02, progress=False)
        save_checkpoint(tmp_path / f"{name}.pt", model)
        expected[name] = _predict(model, x[:7])
    torch.save(x[:7], tmp_path / "x.pt")
    code = textwrap.dedent(f'''
        import json, pyro, torch
        import user_priors                    # the user's registered classes
        from bjepa.inference import load_model
        x = torch.load({str(tmp_path / "x.pt")!r})
        out = {{}}
        for name in {list(expected)!r}:
            m = load_model({str(tmp_path)!r} + "/" + name + ".pt")
            pyro.set_rng_seed(11)
            d = m.predict(x, num_samples=8)
            out[name] = {{"mean": d.mean.tolist(), "variance": d.variance.tolist(),
                         "prior": type(m.struct_prior).__mro__[1].__name__}}
        print(json.dumps(out))
    ''')
    res = _fresh_python(code, folder)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for name, want in expected.items():
        assert got[name]["mean"] == want["mean"], name
        assert got[name]["variance"] == want["variance"], name
    assert got["custom_latent"]["prior"] == "StudentT"
    assert got["mixture"]["prior"] == "MixturePrior"


def test_unregistered_in_loading_process_says_how_to_register(tmp_path, custom_module):
    folder, custom = custom_module
    save_checkpoint(tmp_path / "m.pt", BJEPA(OBS, LAT, prior=custom.StudentT(LAT)))
    code = f"from bjepa.inference import load_model; load_model({str(tmp_path / 'm.pt')!r})"
    res = _fresh_python(code)                 # user_priors not imported
    assert res.returncode != 0
    assert "'test_student_t'" in res.stderr and "not registered in this process" in res.stderr
    assert "@register_prior" in res.stderr and "never imports code" in res.stderr


def test_unregistered_class_saves_and_asks_for_the_prior_on_load(tmp_path):
    class Quadratic(LatentPrior):
        def log_prob(self, z, eta=None):
            return -z.pow(2).sum(-1)

    model = BJEPA(OBS, LAT, prior=Quadratic(LAT))
    assert model.hparams["prior"].startswith("custom:")
    save_checkpoint(tmp_path / "q.pt", model)
    with pytest.raises(CheckpointError, match="was not registered when the checkpoint was saved"):
        load_model(tmp_path / "q.pt")
    again = load_model(tmp_path / "q.pt", prior=Quadratic(LAT))
    x = torch.randn(5, OBS)
    assert torch.equal(again.predict(x).mean, model.predict(x).mean)


def test_callables_need_the_prior_again_and_overrides_are_used(tmp_path):
    x = torch.randn(30, OBS)
    model = BJEPA(OBS, LAT, prior=EnergyPrior(LAT, _energy),
                  weight_prior=lambda name, p: torch.distributions.Normal(0.0, 0.5))
    fit(model, x[:-1], x[1:], steps=4, progress=False)
    save_checkpoint(tmp_path / "e.pt", model)
    with pytest.raises(CheckpointError, match=r"prior 'energy'.*argument 'energy' is a function"):
        load_model(tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match=r"weight_prior 'callable'"):
        load_model(tmp_path / "e.pt", prior=EnergyPrior(LAT, _energy))
    again = load_model(tmp_path / "e.pt", prior=EnergyPrior(LAT, _energy),
                       weight_prior=lambda name, p: torch.distributions.Normal(0.0, 0.5))
    assert _predict(again, x[:4]) == _predict(model, x[:4])
    # an override replaces the saved prior; the saved learnable state is loaded into it
    g = BJEPA(OBS, LAT, prior=GaussianPrior(LAT, learnable=True))
    with torch.no_grad():
        g.struct_prior.loc.fill_(0.25)
    save_checkpoint(tmp_path / "g.pt", g)
    given = GaussianPrior(LAT, 3.0, learnable=True)
    loaded = load_model(tmp_path / "g.pt", prior=given)
    assert torch.allclose(loaded.struct_prior.loc, torch.full((LAT,), 0.25))
    with pytest.raises(CheckpointError, match="takes no prior"):
        from bjepa.models import VJEPA

        save_checkpoint(tmp_path / "v.pt", VJEPA(OBS, LAT))
        load_model(tmp_path / "v.pt", prior=StandardNormal(LAT))


def test_prior_spec_is_plain_and_rebuilds():
    spec = prior_spec(MixturePrior(torch.zeros(2, 3), 0.5))
    assert spec["name"] == "mixture" and spec["kind"] == "latent" and spec["unsaved"] is None
    again = build_prior(spec)
    assert isinstance(again, MixturePrior) and torch.equal(again.locs, torch.zeros(2, 3))
    assert prior_spec(NormalWeightPrior(0.3, include=("weight",)))["args"] == {
        "scale": 0.3, "include": {"__tuple__": ["weight"]}}
    with pytest.raises(ValueError, match="taken by"):
        register_prior("gaussian")(type("Other", (LatentPrior,), {}))


def test_load_model_on_a_folder_takes_the_newest(tmp_path):
    x = torch.randn(30, OBS)
    model = BJEPA(OBS, LAT, weight_prior="normal")
    fit(model, x[:-1], x[1:], steps=20, checkpoint_dir=tmp_path / "run" / "checkpoints",
        checkpoint_every=10, progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    assert find_latest_checkpoint(ckpts) == ckpts / "step-000000020.pt"
    assert find_latest_checkpoint(tmp_path / "run") == ckpts / "step-000000020.pt"
    m20 = load_model(tmp_path / "run")
    assert _predict(m20, x[:3]) == _predict(model, x[:3])
    save_checkpoint(tmp_path / "run" / "model.pt", model)
    assert find_latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "model.pt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_model(tmp_path / "empty")
    (tmp_path / "two").mkdir()
    for n in ("a.pt", "b.pt"):
        save_checkpoint(tmp_path / "two" / n, model)
    with pytest.raises(CheckpointError, match="several models"):
        load_model(tmp_path / "two")


# -- weight priors written as subclasses ----------------------------------------------------
class _Scalar(WeightPrior):
    def site_dist(self, name, param):
        return torch.distributions.Laplace(0.0, 1.0)


class _Independent(WeightPrior):
    def site_dist(self, name, param):
        return torch.distributions.Independent(
            torch.distributions.Normal(torch.zeros_like(param), 1.0), param.dim())


class _RowScales(WeightPrior):     # batch (out, 1) broadcasts to a weight (out, in)
    def site_dist(self, name, param):
        shape = (param.shape[0], 1) if param.dim() == 2 else param.shape
        return torch.distributions.StudentT(4.0, torch.zeros(shape), torch.ones(shape))


class _Wrong(WeightPrior):
    def site_dist(self, name, param):
        return torch.distributions.Normal(torch.zeros(7, 3), 1.0)


class _NotADistribution(WeightPrior):
    def site_dist(self, name, param):
        return torch.zeros_like(param)


@pytest.mark.parametrize("prior", [_Scalar, _Independent, _RowScales])
def test_weight_prior_subclasses_are_normalised(prior):
    x = torch.randn(40, OBS)
    model = BJEPA(OBS, LAT, weight_prior=prior())
    hist = fit(model, x[:-1], x[1:], steps=5, progress=False)
    assert torch.isfinite(torch.tensor(hist.final_loss))
    draws = model.weight_samples(3)
    for module, p_name, full in model._weight_sites:
        site = f"{module._pyro_name}.{p_name}"
        assert draws[site].shape[1:] == model._weight_templates[full].shape
    d = model._weight_site_prior("net.weight")
    assert d.event_shape == model._weight_templates["net.weight"].shape and not d.batch_shape


@pytest.mark.parametrize(("prior", "match"), [
    (_Wrong, r"_Wrong.site_dist\('net.weight'\) returned batch shape \(7, 3\)"),
    (_NotADistribution, r"_NotADistribution.site_dist must return a torch.distributions"),
])
def test_bad_weight_priors_are_refused_naming_the_prior(prior, match):
    with pytest.raises(PriorError, match=match):
        BJEPA(OBS, LAT, weight_prior=prior())


def test_hierarchical_scale_is_a_guided_global_latent_or_learned():
    x = torch.randn(60, OBS)
    hc = BJEPA(OBS, LAT, weight_prior=HierarchicalWeightPrior(1.0))
    fit(hc, x[:-1], x[1:], steps=5, progress=False)
    median = hc.weight_guide.median()
    assert f"{hc._pyro_name}.weight_hyper.scale" in median
    learned = BJEPA(OBS, LAT, weight_prior=HierarchicalWeightPrior(2.0, hyperprior="learned"))
    before = float(learned.weight_hyper.scale.detach())
    fit(learned, x[:-1], x[1:], steps=30, lr=0.05, progress=False)
    assert float(learned.weight_hyper.scale.detach()) != before   # the ELBO moves it
    with pytest.raises(ValueError, match="hyperprior must be"):
        HierarchicalWeightPrior(1.0, hyperprior="gamma")


# -- priors conditioned on data ---------------------------------------------------------------
class _Affine(LatentPrior):
    """p(z | eta) = N(A eta + b, 0.3²): learnable, conditioned on a per-row eta."""

    def __init__(self, dim: int, eta_dim: int) -> None:
        super().__init__(dim)
        self.A = torch.nn.Parameter(torch.zeros(dim, eta_dim))
        self.b = torch.nn.Parameter(torch.zeros(dim))
        self.seen: list[torch.Tensor] = []

    def log_prob(self, z, eta=None):
        assert eta is not None and eta.shape[:-1] == z.shape[-2:-1]
        self.seen.append(eta.detach())
        loc = eta @ self.A.T + self.b
        return torch.distributions.Normal(loc, 0.3).log_prob(z).sum(-1)


def test_structural_prior_conditioned_on_eta_trains_with_subsampling():
    torch.manual_seed(0)
    n = 200
    x = torch.randn(n + 1, OBS)
    eta = torch.arange(n, dtype=torch.float32).unsqueeze(1)   # row index: subsampling visible
    model = BJEPA(OBS, LAT, prior=_Affine(LAT, 1), gamma=1.0)
    # the trainer's stepper (fit's), over model.parameters(), which hold the prior's A and b
    svi = FusedSVI(model.model, model.guide, model.parameters(), TraceMeanField_ELBO(), lr=0.01)
    before = model.struct_prior.A.detach().clone()
    for _ in range(5):
        svi.step(x[:-1], x[1:], batch_size=16, eta=eta)
    prior = model.struct_prior
    assert not torch.equal(prior.A.detach(), before)              # it learns
    assert all(s.shape == (16, 1) for s in prior.seen)
    rows_seen = torch.cat(prior.seen).flatten()
    assert len(set(rows_seen.tolist())) > 16                      # different rows per step
    with pytest.raises(ValueError, match="one row per context row"):
        model.model(x[:-1], x[1:], eta=eta[:10])


def test_fit_passes_eta_to_the_structural_prior_in_minibatches():
    torch.manual_seed(1)
    n = 120
    x = torch.randn(n + 1, OBS)
    eta = torch.arange(n, dtype=torch.float32).unsqueeze(1) / n
    model = BJEPA(OBS, LAT, prior=_Affine(LAT, 1), gamma=1.0)
    fit(model, x[:-1], x[1:], steps=4, lr=0.01, batch_size=10, progress=False,
        model_kwargs={"eta": eta})
    seen = model.struct_prior.seen
    assert seen and all(s.shape == (10, 1) for s in seen)
    assert len(set(torch.cat(seen).flatten().tolist())) > 10   # rows follow the plate
