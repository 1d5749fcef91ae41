"""Tests for the mutants a full `make mutate` run of bjepa/metrics.py and
inference/checkpoint.py left alive (docs/testing.md lists them): each pins one behaviour."""

import math

import pytest
import torch

from bjepa.inference.checkpoint import load_checkpoint, save_checkpoint
from bjepa.metrics import canonical_directions, linear_probe_r2, logistic_probe, r2_score
from bjepa.models import VJEPA


def test_r2_treats_a_column_constant_to_one_part_in_a_million_as_constant():
    """R² of a column whose spread is 1e-7 of its size is undefined (NaN), not noise fitting:
    the threshold is relative to the column's squared scale."""
    g = torch.Generator().manual_seed(0)
    y = 1000.0 + 1e-4 * torch.randn(200, 1, generator=g, dtype=torch.float64)
    assert torch.isnan(r2_score(y, y + 1e-5)).all()
    y2 = 1000.0 + 1e-1 * torch.randn(200, 1, generator=g, dtype=torch.float64)
    assert torch.isfinite(r2_score(y2, y2 + 1e-3)).all()


def test_linear_probe_refuses_as_many_rows_as_columns():
    z, y = torch.randn(4, 4), torch.randn(4, 1)
    with pytest.raises(ValueError, match="more rows than columns"):
        linear_probe_r2(z, y, z, y)
    z5, y5 = torch.randn(5, 4), torch.randn(5, 1)
    assert torch.isfinite(torch.as_tensor(linear_probe_r2(z5, y5, z5, y5))).all()


def test_canonical_directions_ignore_constant_offsets_of_either_side():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(500, 2, generator=g, dtype=torch.float64)
    a = torch.cat([s, torch.randn(500, 3, generator=g, dtype=torch.float64)], 1)
    b = torch.cat([s @ torch.randn(2, 2, generator=g, dtype=torch.float64),
                   torch.randn(500, 3, generator=g, dtype=torch.float64)], 1)
    w, rho = canonical_directions(a, b, 2)
    for da, db in ((7.0, 0.0), (0.0, -9.0)):
        w2, rho2 = canonical_directions(a + da, b + db, 2)
        torch.testing.assert_close(rho2, rho)
        torch.testing.assert_close(w2.abs(), w.abs())


def test_logistic_probe_allows_no_penalty_and_refuses_a_negative_one():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(60, 2, generator=g)
    y = (z[:, 0] > 0).long()
    assert logistic_probe(z, y, l2=0.0, max_iter=50).accuracy(z, y) > 0.9
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        logistic_probe(z, y, l2=-1e-3)


def test_checkpoints_can_be_saved_into_folders_that_do_not_exist_yet(tmp_path):
    m = VJEPA(6, 2)
    path = tmp_path / "a" / "b" / "c" / "model.pt"
    save_checkpoint(path, m)
    assert load_checkpoint(path)["model_class"] == "VJEPA"


def test_a_checkpoint_that_does_not_fit_names_what_torch_found(tmp_path):
    from bjepa.inference.checkpoint import CheckpointError, restore_model_state

    save_checkpoint(tmp_path / "m.pt", VJEPA(6, 2))
    payload = load_checkpoint(tmp_path / "m.pt")
    payload["state_dict"].pop(next(iter(payload["state_dict"])))  # a key the model needs
    with pytest.raises(CheckpointError, match=r"does not fit this VJEPA: Error\(s\) in loading"):
        restore_model_state(payload, VJEPA(6, 2), tmp_path / "m.pt")


def test_newest_checkpoint_prefers_model_pt_when_two_files_are_equally_new(tmp_path):
    import os

    from bjepa.inference.checkpoint import find_latest_checkpoint

    (tmp_path / "checkpoints").mkdir()
    a, b = tmp_path / "model.pt", tmp_path / "checkpoints" / "step-000000010.pt"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    os.utime(a, ns=(10**18, 10**18))
    os.utime(b, ns=(10**18, 10**18))
    assert find_latest_checkpoint(tmp_path) == a
    os.utime(b, ns=(10**18 + 1, 10**18 + 1))
    assert find_latest_checkpoint(tmp_path) == b


# -- survivors of the full runs of checkpoint.py, collapse.py and priors.py (issue #24) ---------


def test_a_torn_checkpoint_names_the_first_line_of_the_unpickling_error(tmp_path):
    """A torch archive whose pickle the weights-only unpickler refuses for a reason that is
    neither a global nor an unknown opcode: the message carries that error's first line."""
    import pickle
    import zipfile

    from bjepa.inference.checkpoint import CheckpointError

    good = save_checkpoint(tmp_path / "good.pt", VJEPA(4, 2))
    with zipfile.ZipFile(good) as z:
        items = {n: z.read(n) for n in z.namelist()}
    torn = tmp_path / "torn.pt"
    with zipfile.ZipFile(torn, "w", zipfile.ZIP_STORED) as z:
        for name, data in items.items():
            # a persistent id that is a string, not a storage tuple
            z.writestr(name, b"\x80\x02X\x03\x00\x00\x00abcQ." if name.endswith("data.pkl")
                       else data)
    with pytest.raises(pickle.UnpicklingError) as raw:
        torch.load(torn, weights_only=True)
    first = str(raw.value).splitlines()[0]
    assert first and "global" not in str(raw.value).lower()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(torn)
    assert str(err.value).endswith(f"is truncated, corrupt or not a torch checkpoint ({first})")


@pytest.mark.parametrize("role", ["prior", "weight_prior"])
def test_a_prior_passed_to_load_model_replaces_the_saved_one_without_a_warning(
        tmp_path, caplog, role):
    """Passing either prior to load_model is deliberate: the saved prior records are not
    compared with the model's, so no "built with other arguments" warning; without an
    override the rebuilt priors match and there is nothing to warn about either."""
    import logging

    from bjepa.inference import load_model
    from bjepa.models import BJEPA
    from bjepa.priors import GaussianPrior, NormalWeightPrior

    saved = BJEPA(4, 2, prior=GaussianPrior(2, scale=2.0, learnable=True),
                  weight_prior=NormalWeightPrior(0.5))
    path = save_checkpoint(tmp_path / "b.pt", saved)
    given = {"prior": GaussianPrior(2, scale=3.0, learnable=True),
             "weight_prior": NormalWeightPrior(2.0)}[role]
    with caplog.at_level(logging.WARNING, logger="bjepa.inference.checkpoint"):
        plain = load_model(path)
        loaded = load_model(path, **{role: given})
    assert not caplog.records, [r.message for r in caplog.records]
    assert getattr(loaded, "struct_prior" if role == "prior" else "weight_prior") is given
    assert plain.weight_prior.scale == 0.5
    torch.testing.assert_close(loaded.struct_prior.scale, saved.struct_prior.scale)


@pytest.mark.parametrize("size", [1e-6, 1.0, 1e6])
def test_effective_rank_of_a_representation_does_not_depend_on_its_units(size):
    """The constant-representation threshold is relative to the representation's magnitude:
    rows differing by 1e-11 of their size are constant (rank 0) and rows differing by 1e-6
    are not, whatever the units."""
    from bjepa.diagnostics.collapse import effective_rank

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(100, 3, generator=g, dtype=torch.float64)
    assert effective_rank(size * (1.0 + 1e-11 * noise))[0] == 0.0
    erank = effective_rank(size * (1.0 + 1e-6 * noise))[0]
    assert erank == pytest.approx(effective_rank(noise)[0], rel=1e-6) and erank > 2.5


def test_a_healthy_verdict_mentions_the_variance_floor_only_when_it_was_checked():
    from bjepa.diagnostics.collapse import collapse_from_moments

    loc = torch.tensor([[1.0 if (i >> j) & 1 else -1.0 for j in range(3)] for i in range(8)],
                       dtype=torch.float64)
    small = torch.full((8, 3), 0.1, dtype=torch.float64)
    checked = collapse_from_moments(loc, small, loc, predictive_scale=small)
    unchecked = collapse_from_moments(loc, small, loc)
    assert checked.verdict == unchecked.verdict == "healthy"
    assert checked.reasons[-1] == ("all 3 units active and informative, effective rank 3.00 of "
                                   "3, no predictions at the variance floor")
    assert unchecked.reasons[-1] == "all 3 units active and informative, effective rank 3.00 of 3"


def test_collapse_diagnostics_reads_a_default_predictive_scale_from_latent_models_only():
    """A latent model's own predictive scale is the default for the floor check, and a scale
    the caller passes wins; an observation-space model (VAE) has no latent predictive, so
    without a scale there is no floor check."""
    from bjepa.diagnostics.collapse import collapse_diagnostics
    from bjepa.models import VAE

    torch.manual_seed(0)
    x = torch.randn(41, 5, dtype=torch.float64)
    m = VJEPA(5, 2, init="random").double()
    own = collapse_diagnostics(m, x[:-1], x[1:])
    torch.testing.assert_close(torch.tensor(own.predictive_sd_median, dtype=torch.float64),
                               m.predict(x[:-1]).stddev.median(0).values)
    at_floor = torch.full((40, 2), 1e-4, dtype=torch.float64)
    given = collapse_diagnostics(m, x[:-1], x[1:], predictive_scale=at_floor)
    assert given.predictive_sd_median == [1e-4, 1e-4] and given.floor_share == [1.0, 1.0]
    vae = collapse_diagnostics(VAE(5, 2).double(), x)
    assert vae.floor_share is None and vae.predictive_sd_median is None


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the prior registry, so that test registrations do not leak."""
    from bjepa import priors

    monkeypatch.setattr(priors, "_REGISTRY", dict(priors._REGISTRY))
    return priors


def test_register_prior_refuses_classes_that_are_not_priors(registry):
    class NotAPrior:
        pass

    for obj in (NotAPrior, int, NotAPrior()):
        with pytest.raises(TypeError, match="decorates LatentPrior or WeightPrior subclasses"):
            registry.register_prior("test_not_a_prior")(obj)
    assert "test_not_a_prior" not in registry.registered_priors()


def test_register_prior_names_must_be_non_empty_strings_and_default_to_the_class_name(registry):
    for bad in ("", 5, b"name"):
        with pytest.raises(TypeError, match="takes a non-empty name string"):
            registry.register_prior(bad)

    @registry.register_prior()
    class TestCalledWithoutAName(registry.LatentPrior):
        def log_prob(self, z, eta=None):
            return -z.pow(2).sum(-1)

    assert registry.registered_priors()["TestCalledWithoutAName"] is TestCalledWithoutAName
    assert registry.prior_spec(TestCalledWithoutAName(2))["name"] == "TestCalledWithoutAName"


def test_a_prior_whose_class_a_rerun_definition_replaced_is_saved_unregistered(registry):
    """Re-running a registered class's definition (a notebook cell) replaces it in the
    registry; an instance of the old class is then not what the name rebuilds, so its
    record carries no name."""
    def define():
        @registry.register_prior("test_rerun_prior")
        class Rerun(registry.LatentPrior):
            def log_prob(self, z, eta=None):
                return -z.pow(2).sum(-1)
        return Rerun

    old = define()
    old_prior = old(2)
    assert registry.prior_spec(old_prior)["name"] == "test_rerun_prior"
    new = define()
    assert new is not old and registry.registered_priors()["test_rerun_prior"] is new
    assert registry.prior_spec(old_prior)["name"] is None
    assert registry.prior_spec(new(2))["name"] == "test_rerun_prior"


@pytest.mark.parametrize("spec", [{}, {"name": "gaussian"}, None, 3, ["class"]])
def test_build_prior_names_a_malformed_record(spec):
    from bjepa.priors import PriorError, build_prior

    with pytest.raises(PriorError, match=r"malformed weight_prior record in the checkpoint"):
        build_prior(spec, role="weight_prior")


def test_a_mixture_component_may_have_weight_zero_but_not_all_of_them():
    from bjepa.priors import MixturePrior

    locs = torch.tensor([[0.0, 0.0], [3.0, -1.0]], dtype=torch.float64)
    z = torch.tensor([[0.5, -0.2], [2.0, 1.0]], dtype=torch.float64)
    mix = MixturePrior(locs, 0.5, weights=torch.tensor([1.0, 0.0], dtype=torch.float64))
    one = MixturePrior(locs[:1], 0.5)
    torch.testing.assert_close(mix.log_prob(z), one.log_prob(z))
    with pytest.raises(ValueError, match="non-negative numbers with a positive sum"):
        MixturePrior(locs, 0.5, weights=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers"):
        MixturePrior(locs, 0.5, weights=torch.ones(3, dtype=torch.float64))  # one too many


# -- survivors of the full run of bjepa/diagnostics/calibration.py ----------------------------


def _quantile_grid(locs, spreads, n=2000):
    """N(0, 1) observations on an exact quantile grid and a diagonal Gaussian predictive."""
    from torch.distributions import Independent, Normal

    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    y = torch.special.ndtri(u)[:, None].expand(n, len(spreads))
    loc = torch.tensor(locs, dtype=torch.float64).expand(n, len(locs))
    sd = torch.tensor(spreads, dtype=torch.float64).expand(n, len(spreads))
    return Independent(Normal(loc, sd), 1), y


def test_calibration_options_are_keyword_only_and_inputs_may_be_named():
    from torch.distributions import Independent, Normal

    from bjepa.diagnostics.calibration import Forecast, as_forecast, calibrate, crps, pit

    d, y = _quantile_grid([0.0, 0.0], [1.0, 1.0], n=50)
    loc, scale = torch.zeros(1, 50, 2), torch.ones(1, 50, 2)
    nonpar = Independent(Normal(torch.zeros(50, 2), 1.0), 1)
    for call in (lambda: Forecast(loc, scale), lambda: Forecast.from_distribution(d, 10),
                 lambda: Forecast.mixture([d], 10), lambda: as_forecast(d, 10),
                 lambda: pit(d, y, 10), lambda: crps(d, y, 10),
                 lambda: calibrate(d, y, (0.5, 0.9))):
        with pytest.raises(TypeError, match="positional argument"):
            call()
    assert Forecast(loc=loc, scale=scale).kind == "gaussian"
    torch.testing.assert_close(pit(predictive=d, observed=y), pit(d, y))
    torch.testing.assert_close(crps(predictive=d, observed=y), crps(d, y))
    assert as_forecast(predictive=nonpar).kind == "gaussian"
    assert Forecast.from_distribution(d=d).kind == "gaussian"
    assert Forecast.mixture(dists=[d, d]).kind == "gaussian mixture"
    assert calibrate(predictive=d, observed=y).verdict == "calibrated"


def test_a_hand_built_forecast_evaluates_its_density_in_the_dtype_of_its_parameters():
    from bjepa.diagnostics.calibration import Forecast

    seen = []

    def log_prob(y):
        seen.append(y.dtype)
        return -y.pow(2).sum(-1)

    fc = Forecast(loc=torch.zeros(1, 3, 2), scale=torch.ones(1, 3, 2), log_prob=log_prob)
    out = fc.log_prob(torch.ones(3, 2, dtype=torch.float64))
    assert seen == [torch.float32] and out.dtype == torch.float64
    torch.testing.assert_close(out, torch.full((3,), -2.0, dtype=torch.float64))
    wide = Forecast(loc=torch.zeros(1, 3, 2), scale=torch.ones(1, 3, 2), log_prob=log_prob,
                    dtype=torch.float64)
    wide.log_prob(torch.ones(3, 2))
    assert seen[-1] == torch.float64


@pytest.mark.parametrize("make", ["forecast", "mixture"])
def test_predictives_must_have_one_batch_and_one_event_dimension(make):
    from torch.distributions import Independent, Normal

    from bjepa.diagnostics.calibration import Forecast

    build = Forecast.from_distribution if make == "forecast" else \
        (lambda d: Forecast.mixture([d]))
    for bad in (Normal(torch.zeros(5), 1.0),                       # no event dimension
                Independent(Normal(torch.zeros(4, 5, 2), 1.0), 1)):  # two batch dimensions
        with pytest.raises(ValueError, match=r"batch shape \(N,\) and event shape \(D,\)"):
            build(bad)
    with pytest.raises(TypeError, match="predictive must be a torch Distribution, got list"):
        build([1.0, 2.0])


def test_a_calibration_report_prints_and_serialises_without_the_raw_pit():
    import json

    from bjepa.diagnostics.calibration import calibrate

    d, y = _quantile_grid([0.0, 0.0], [1.0, 1.0])
    r = calibrate(d, y)
    assert r.pit.shape == (2000, 2) and "pit=" not in repr(r)
    out = r.to_dict()
    fields = set(r.__dataclass_fields__) - {"pit"}
    assert set(out) == fields | {"pit_histogram"}
    assert out["verdict"] == "calibrated" and out["pit_histogram"]["bins"] == 20
    assert sum(out["pit_histogram"]["counts"]) == 4000
    json.dumps(out)


@pytest.mark.parametrize(("levels", "shown"), [((0.5, 0.9, 0.95), 90), ((0.5, 0.8, 0.95), 95),
                                               ((0.8,), 80)])
def test_the_summary_sentence_states_the_level_coverage_and_scores(levels, shown):
    """The summary reports the 90 % interval when it was checked, else the widest one."""
    from bjepa.diagnostics.calibration import calibrate

    d, y = _quantile_grid([0.0, 0.0], [1.0, 1.0])
    r = calibrate(d, y, levels=levels)
    assert r.summary() == (
        f"calibrated: {100 * r.coverage_at(shown / 100):.1f} % of observed values inside the "
        f"central {shown} % intervals (nominal {shown} %), PIT KS p = {r.ks_pvalue:.3g}, "
        f"CRPS {r.crps:.4g}, NLL {r.nll:.4g} nats")
    draws = calibrate(d.sample((400,)), y, levels=levels)
    assert draws.nll is None and draws.summary().endswith(f"CRPS {draws.crps:.4g}")


def test_bias_messages_give_one_mean_pit_or_the_range_over_dimensions():
    from bjepa.diagnostics.calibration import calibrate

    d, y = _quantile_grid([0.3, 0.0], [1.0, 1.0])
    r = calibrate(d, y)
    m = r.pit_mean_per_dim
    assert r.reasons[0] == ("biased in dims [0]: the observed value lies below the predictive "
                            f"median too often (mean PIT {m[0]:.2f}, ideal 0.50)")
    d, y = _quantile_grid([0.3, 0.5], [1.0, 1.0])
    r = calibrate(d, y)
    m = r.pit_mean_per_dim
    assert r.reasons[0] == (f"biased in dims [0, 1]: the observed value lies below the "
                             f"predictive median too often (mean PIT {m[1]:.2f}–{m[0]:.2f}, "
                             f"ideal 0.50)")


def test_a_calibrated_verdict_states_the_allowance_in_points():
    from bjepa.diagnostics.calibration import calibrate

    d, y = _quantile_grid([0.0, 0.0], [1.0, 1.0])
    r = calibrate(d, y, tolerance=0.05)
    allowed = 100 * min(r.allowed_deviation)
    assert allowed == pytest.approx(min(100 * (0.05 + 3 * math.sqrt(lv * (1 - lv) / 2000))
                                        for lv in r.levels))
    assert r.reasons == [f"coverage of observed values is within ±{allowed:.1f} points of "
                         "nominal at every level and in every dimension"]
