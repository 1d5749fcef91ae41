"""Mutation testing of bjepa's core numerical modules with cosmic-ray (``make mutate``).

cosmic-ray mutates the source files *in place*, one mutant at a time, and runs a test command
against each. This script therefore never touches the repository it is started from: it works
in a separate clone (``--workdir``, made with ``git clone`` of this repository's committed
``HEAD`` if missing, ``git pull`` otherwise) with its own virtual environment, whose editable
install maps ``bjepa.models`` → ``models/`` and ``bjepa.inference`` → ``inference/`` of that
clone, so the tests import the mutated files.

Each module is tested by the tests that exercise it (``MODULES`` below), with ``pytest -x`` so
a killed mutant stops at its first failing test. Only a focused set of operators is used
(``OPERATORS``: one natural mutation per arithmetic operator, comparison, boolean, unary sign,
constant and loop), which keeps a full run near an hour on two cores.

    python mutation/run.py                       # every module, resuming unfinished sessions
    python mutation/run.py --modules models/ema.py --fresh
    python mutation/run.py --recheck-survivors   # re-run only the survivors (after new tests)

Results: ``<workdir>/.mutation/<module>.sqlite`` (cosmic-ray sessions) and a summary
``<workdir>/.mutation/summary.json`` with the score and every surviving mutant's diff.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _ids(path: str, *names: str) -> list[str]:
    return [f"{path}::{n}" for n in names]


GAPS, EXTRA = "tests/test_mutation_gaps.py", "tests/test_mutation_extra.py"
_CKPT = _ids("tests/test_reliability.py", "test_training_checkpoint_holds_everything",
             "test_checkpoint_at_step_zero_resumes_without_reinitialising",
             "test_exact_resume_bit_for_bit", "test_resume_refuses_what_does_not_match",
             "test_interrupted_write_keeps_the_previous_checkpoint",
             "test_malicious_pickle_is_refused_without_running",
             "test_every_truncation_is_a_clear_error", "test_flipped_bytes_are_caught_or_harmless",
             "test_wrong_or_tampered_checkpoints_give_clear_errors",
             "test_save_refuses_values_that_could_not_be_loaded_safely",
             "test_model_checkpoints_round_trip_for_every_model",
             "test_bjepa_with_weight_posterior_round_trips",
             "test_checkpoint_manager_cleans_stale_temp_files")
_DIAG_CAL = _ids("tests/test_diagnostics.py", "test_crps_closed_forms_match_the_defining_integral",
                 "test_sample_based_scores_agree_with_closed_forms",
                 "test_draws_from_the_predictive_are_calibrated",
                 "test_correctly_specified_linear_gaussian_is_calibrated_and_healthy",
                 "test_rescaled_predictive_is_flagged", "test_bad_inputs_are_named")
_DIAG_COLLAPSE = _ids("tests/test_diagnostics.py", "test_vjepa_with_small_beta_is_healthy",
                      "test_constant_encoder_is_collapsed",
                      "test_vjepa_with_large_beta_is_not_healthy",
                      "test_collapse_statistics_scale_invariance_and_dead_units",
                      "test_deterministic_jepa_is_explained_not_crashed",
                      "test_correctly_specified_linear_gaussian_is_calibrated_and_healthy",
                      "test_bad_inputs_are_named")
_BJEPA = _ids("tests/test_bjepa.py", "test_guide_covers_every_model_latent",
              "test_weight_posterior_trains_and_predicts", "test_callable_weight_prior",
              "test_goal_prior_moves_prediction_by_the_precisions",
              "test_custom_prior_end_to_end", "test_energy_fusion_reports_ess",
              "test_only_models_without_a_weight_prior_may_be_compiled")

_GAPS_TRAINER = _ids(GAPS,
                     "test_trainer_ema_target_equals_hand_rolled_ema_under_cosine_tau_step_by_step",
                     "test_vjepa_target_mean_is_the_stop_gradient_ema_not_the_online_encoder")
_GAPS_PRIOR = _ids(GAPS, "test_gaussian_prior_precision_is_one_over_sigma_squared_in_fusion",
                   "test_fuse_gaussian_is_the_product_of_two_gaussians",
                   "test_trained_bjepa_structural_prior_fuses_by_its_learned_precision")
_GAPS_RNG = _ids(GAPS, "test_rng_round_trip_restores_python_numpy_torch_and_pyro",
                 "test_resume_continues_python_and_numpy_random_streams")
_GAPS_CAL = _ids(GAPS, "test_coverage_is_the_share_of_rows_inside_each_central_interval",
                 "test_pit_is_the_predictive_cdf_at_the_observation",
                 "test_calibration_verdict_flags_ten_to_twenty_percent_spread_errors",
                 "test_calibration_tolerance_argument_moves_the_verdict")

#: module → the tests that exercise it, fastest and most exact first (``pytest -x`` stops a
#: killed mutant at its first failure, so a survivor costs the whole selection)
MODULES: dict[str, list[str]] = {
    "models/ema.py": [
        EXTRA, *_GAPS_TRAINER,
        *_ids("tests/test_training.py", "test_ema_update_exact_and_gradient_free",
              "test_ema_target_not_trainable", "test_tau_schedules",
              "test_target_variance_gets_gradient_and_mean_does_not"),
        *_ids("tests/test_sweeps.py", "test_ema_update_with_tau_zero_is_an_exact_copy",
              "test_tau_zero_target_is_stop_gradient_copy_of_context_encoder"),
    ],
    "models/vjepa.py": [
        *_GAPS_TRAINER, "tests/test_vjepa_elbo.py",
        *_ids("tests/test_training.py", "test_target_variance_gets_gradient_and_mean_does_not",
              "test_predict_shapes", "test_fit_is_seeded", "test_checkpoint_round_trip"),
        "tests/test_fuzz.py::test_known_holes",
    ],
    "models/heads.py": [EXTRA, "tests/test_vjepa_elbo.py",
                        "tests/test_training.py::test_predict_shapes"],
    "models/bjepa.py": [*_GAPS_PRIOR, "tests/test_priors.py", *_BJEPA,
                        "tests/test_prior_io.py"],
    "bjepa/priors.py": ["tests/test_priors_exact.py", "tests/test_priors.py", *_GAPS_PRIOR,
                        "tests/test_prior_io.py", *_BJEPA, "tests/test_mutation_survivors.py"],
    "bjepa/metrics.py": [
        EXTRA, "tests/test_validation.py::test_probe_errors",
        *_ids("tests/test_restarts.py",
              "test_predictive_information_matches_the_gaussian_closed_form",
              "test_predictive_information_is_affine_invariant_and_zero_for_constants",
              "test_predictive_information_validates_its_inputs"),
        "tests/test_noisy_tv.py::test_probe_r2_known_values",
        "tests/test_noisy_tv.py::test_canonical_directions_recover_shared_subspace",
        "tests/test_fuzz.py::test_fuzz_linear_probe",
        "tests/test_mutation_survivors.py",
    ],
    "bjepa/diagnostics/calibration.py": ["tests/test_calibration_exact.py", *_GAPS_CAL,
                                         *_DIAG_CAL, "tests/test_mutation_survivors.py"],
    "bjepa/diagnostics/collapse.py": ["tests/test_collapse_exact.py", *_DIAG_COLLAPSE,
                                      "tests/test_mutation_survivors.py"],
    "inference/checkpoint.py": [
        "tests/test_checkpoint_exact.py", *_GAPS_RNG,
        *_ids("tests/test_training.py", "test_checkpoint_round_trip",
              "test_malicious_checkpoint_refused"),
        *_CKPT,
        "tests/test_mutation_survivors.py",
        # find_latest_checkpoint and load_model's prior overrides are tested here
        "tests/test_prior_io.py",
    ],
}

#: the operators used; every other cosmic-ray operator is filtered out before the run
OPERATORS = [
    "ReplaceBinaryOperator_Add_Sub", "ReplaceBinaryOperator_Sub_Add",
    "ReplaceBinaryOperator_Mul_Div", "ReplaceBinaryOperator_Div_Mul",
    "ReplaceBinaryOperator_Pow_Mul",
    "ReplaceComparisonOperator_Lt_LtE", "ReplaceComparisonOperator_LtE_Lt",
    "ReplaceComparisonOperator_Gt_GtE", "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_Eq_NotEq", "ReplaceComparisonOperator_NotEq_Eq",
    "ReplaceComparisonOperator_Is_IsNot", "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceComparisonOperator_In_NotIn", "ReplaceComparisonOperator_NotIn_In",
    "ReplaceUnaryOperator_Delete_USub", "ReplaceUnaryOperator_Delete_Not",
    "ReplaceAndWithOr", "ReplaceOrWithAnd", "ReplaceTrueWithFalse", "ReplaceFalseWithTrue",
    "ZeroIterationForLoop",
]


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def prepare(workdir: Path, python: Path | None) -> Path:
    """The clone and its interpreter (created on first use)."""
    if workdir.resolve() == ROOT:
        sys.exit("refusing to mutate the working tree itself: pass another --workdir")
    if not (workdir / ".git").exists():
        sh(["git", "clone", "-q", str(ROOT), str(workdir)])
    else:
        sh(["git", "-C", str(workdir), "pull", "-q", "--ff-only"])
    dirty = subprocess.run(["git", "-C", str(workdir), "status", "--porcelain", "--",
                            *MODULES], capture_output=True, text=True, check=True).stdout
    if dirty.strip():  # a run killed mid-mutant leaves a mutated file behind
        sh(["git", "-C", str(workdir), "checkout", "--", *MODULES])
    if python is None:
        python = workdir / ".venv" / "bin" / "python"
        if not python.exists():
            sh([sys.executable, "-m", "venv", str(workdir / ".venv")])
            sh([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"])
            sh([str(python), "-m", "pip", "install", "-q", "-e", f"{workdir}[dev,mutation]"])
    return python


def write_config(path: Path, module: str, python: Path, timeout: float,
                 server: Path | None = None) -> None:
    tests = " ".join(f"'{a}'" for a in MODULES[module])
    keep = "|".join(OPERATORS)
    runner = f"{python} -m pytest" if server is None else \
        f"{python} {ROOT / 'mutation' / 'pytest_client.py'} {server}"
    path.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{runner} -x -q -p no:cacheprovider {tests}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f'exclude-operators = ["^(?!core/({keep})$)"]\n')


def start_server(python: Path, workdir: Path, sock: Path, timeout: float
                 ) -> subprocess.Popen:
    """``pytest_server.py`` for ``workdir``: the third-party imports paid once per module."""
    proc = subprocess.Popen([str(python), str(ROOT / "mutation" / "pytest_server.py"),
                             str(sock), str(workdir), str(int(timeout))],
                            stdout=subprocess.PIPE, text=True, cwd=workdir)
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        sys.exit(f"the pytest server did not start: {line!r}")
    return proc


def baseline(python: Path, module: str, workdir: Path) -> float:
    """Seconds the unmutated tests take; they must pass."""
    t0 = time.perf_counter()
    r = subprocess.run([str(python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        *MODULES[module]], cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the tests for {module} fail without any mutation:\n{r.stdout[-3000:]}")
    return time.perf_counter() - t0


def _has_specs(db: Path) -> bool:
    con = sqlite3.connect(db)
    try:
        return con.execute("select count(*) from mutation_specs").fetchone()[0] > 0
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def apply_sample(db: Path, n: int, seed: int) -> list[str]:
    """Keep a uniform random sample of ``n`` of the module's mutants (after the operator
    filter): the others still pending are marked skipped ("not sampled"). The sample is
    recorded next to the session, so a resumed run keeps it."""
    record = db.with_suffix(".sample.json")
    if record.exists():
        chosen = json.loads(record.read_text())
        if len(chosen) >= n:
            return chosen
        record.unlink()  # a larger sample: draw again from every mutant
    con = sqlite3.connect(db)
    try:
        con.execute("delete from work_results where output = 'not sampled'")
        rows = con.execute(
            "select s.job_id, r.worker_outcome from mutation_specs s left join work_results r "
            "on r.job_id = s.job_id order by s.job_id").fetchall()
        eligible = [j for j, w in rows if (w or "").lower() != "skipped"]
        chosen = sorted(random.Random(seed).sample(eligible, min(n, len(eligible))))
        keep = set(chosen)
        con.executemany(
            "insert into work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "values ('SKIPPED', 'not sampled', NULL, NULL, ?)",
            [(j,) for j, w in rows if w is None and j not in keep])
        con.commit()
    finally:
        con.close()
    record.write_text(json.dumps(chosen))
    return chosen


def summarise(db: Path) -> dict:
    con = sqlite3.connect(db)
    rows = con.execute(
        "select s.job_id, s.operator_name, s.occurrence, s.start_pos_row, "
        "r.test_outcome, r.worker_outcome, r.diff from mutation_specs s "
        "left join work_results r on r.job_id = s.job_id").fetchall()
    con.close()
    record = db.with_suffix(".sample.json")
    sample = set(json.loads(record.read_text())) if record.exists() else None
    out = {"killed": 0, "survived": [], "incompetent": 0, "pending": 0, "skipped": 0,
           "sampled": None if sample is None else len(sample)}
    for job, op, occ, line, test, worker, diff in rows:
        if sample is not None and job not in sample:
            out["skipped"] += 1  # outside the sample (evaluated earlier or not)
        elif (worker or "").lower() == "skipped":
            out["skipped"] += 1
        elif test is None:
            out["pending"] += 1
        elif (test or "").lower() == "killed":
            out["killed"] += 1
        elif (test or "").lower() == "survived":
            body = [x for x in (diff or "").splitlines()
                    if x[:1] in "+-" and not x.startswith(("+++", "---"))]
            out["survived"].append({"line": line, "operator": op.removeprefix("core/"),
                                    "occurrence": occ, "diff": body})
        else:
            out["incompetent"] += 1
    tested = out["killed"] + len(out["survived"])
    out["score"] = round(out["killed"] / tested, 4) if tested else None
    out["survived"].sort(key=lambda s: s["line"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get(
        "BJEPA_MUTATE_DIR", "/tmp/bjepa-mutate")))
    p.add_argument("--python", type=Path, default=None,
                   help="interpreter with the clone installed (default: <workdir>/.venv)")
    p.add_argument("--modules", default=",".join(MODULES))
    p.add_argument("--fresh", action="store_true", help="discard earlier sessions")
    p.add_argument("--recheck-survivors", action="store_true",
                   help="re-run the surviving mutants of earlier sessions (after new tests)")
    p.add_argument("--no-pull", action="store_true", help="use the clone as it is")
    p.add_argument("--sample", type=int, default=None,
                   help="test a uniform random sample of this many mutants per module")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per mutant; skips the baseline run that would set it")
    p.add_argument("--no-server", action="store_true",
                   help="start a fresh pytest process per mutant (slower: no shared imports)")
    args = p.parse_args(argv)
    modules = [m for m in args.modules.split(",") if m]
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    workdir = args.workdir.resolve()
    if args.no_pull:
        if workdir == ROOT:
            sys.exit("refusing to mutate the working tree itself: pass another --workdir")
        python = args.python or workdir / ".venv" / "bin" / "python"
    else:
        python = prepare(workdir, args.python)
    cr = str(Path(python).parent / "cosmic-ray")
    state = workdir / ".mutation"
    state.mkdir(exist_ok=True)
    summary_path = state / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    commit = subprocess.run(["git", "-C", str(workdir), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for module in modules:
        name = re.sub(r"[^A-Za-z0-9]+", "_", module)
        db, cfg = state / f"{name}.sqlite", state / f"{name}.toml"
        t0 = time.perf_counter()
        earlier = re.search(r"^timeout = ([\d.]+)$", cfg.read_text(), re.M) \
            if cfg.exists() and db.exists() and not args.fresh else None
        if args.timeout:  # the caller vouches for the tests (e.g. a re-check)
            base, timeout = math.nan, args.timeout
        elif earlier:  # a session under way: its tests passed before, keep its timeout
            base, timeout = math.nan, float(earlier.group(1))
        else:
            base = baseline(python, module, workdir)
            timeout = round(3 * base + 30, 1)
        server = None if args.no_server else start_server(python, workdir,
                                                          state / "pytest.sock", timeout)
        write_config(cfg, module, python, timeout,
                     None if server is None else state / "pytest.sock")
        source = hashlib.sha256((workdir / module).read_bytes()).hexdigest()
        stamp = db.with_suffix(".source")
        stale = db.exists() and (not stamp.exists() or stamp.read_text() != source)
        if db.exists() and (args.fresh or stale or not _has_specs(db)):
            # a fresh start, a module changed since (mutant positions no longer fit), or an
            # interrupted init
            db.unlink()
            db.with_suffix(".sample.json").unlink(missing_ok=True)
        if not db.exists():
            sh([cr, "init", str(cfg), str(db)], cwd=workdir)
            stamp.write_text(source)
            sh([str(Path(python).parent / "cr-filter-operators"), str(db), str(cfg)],
               cwd=workdir)
        if args.sample:
            apply_sample(db, args.sample, args.seed)
        if args.recheck_survivors:
            record = db.with_suffix(".sample.json")
            only = json.loads(record.read_text()) if record.exists() else None
            con = sqlite3.connect(db)
            try:
                survived = [j for (j,) in con.execute(
                    "select job_id from work_results where lower(test_outcome) = 'survived'")
                    if only is None or j in only]
                con.executemany("delete from work_results where job_id = ?",
                                [(j,) for j in survived])
                con.commit()
            except sqlite3.OperationalError:  # no results yet: nothing to re-run
                pass
            finally:
                con.close()
        try:
            sh([cr, "exec", str(cfg), str(db)], cwd=workdir)
        finally:
            if server is not None:
                server.kill()
                server.wait()
        result = summarise(db)
        result.update(commit=commit, baseline_seconds=round(base, 1),
                      seconds=round(time.perf_counter() - t0, 1))
        summary[module] = result
        summary_path.write_text(json.dumps(summary, indent=1))
        print(f"{module}: {result['killed']} killed, {len(result['survived'])} survived, "
              f"{result['incompetent']} incompetent, score {result['score']} "
              f"({result['seconds']} s)", flush=True)
    killed = sum(summary[m]["killed"] for m in summary)
    survived = sum(len(summary[m]["survived"]) for m in summary)
    print(f"all modules: {killed} killed, {survived} survived, score "
          f"{killed / max(killed + survived, 1):.3f}; details in {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
