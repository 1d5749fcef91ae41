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
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module → the pytest arguments that exercise it (fastest, most targeted first)
MODULES: dict[str, list[str]] = {
    "models/ema.py": [
        "tests/test_mutation_gaps.py", "tests/test_training.py",
        "tests/test_sweeps.py::test_ema_update_with_tau_zero_is_an_exact_copy",
        "tests/test_sweeps.py::test_tau_zero_target_is_stop_gradient_copy_of_context_encoder",
        "tests/test_mutation_extra.py",
    ],
    "models/vjepa.py": [
        "tests/test_mutation_gaps.py", "tests/test_vjepa_elbo.py", "tests/test_training.py",
        "tests/test_mutation_extra.py",
    ],
    "models/heads.py": [
        "tests/test_mutation_extra.py", "tests/test_vjepa_elbo.py", "tests/test_training.py",
        "tests/test_mutation_gaps.py",
    ],
    "models/bjepa.py": [
        "tests/test_mutation_gaps.py", "tests/test_bjepa.py", "tests/test_priors.py",
        "tests/test_mutation_extra.py",
    ],
    "bjepa/priors.py": [
        "tests/test_priors.py", "tests/test_mutation_gaps.py", "tests/test_bjepa.py",
        "tests/test_mutation_extra.py",
    ],
    "bjepa/metrics.py": [
        "tests/test_mutation_extra.py", "tests/test_restarts.py", "tests/test_noisy_tv.py",
        "tests/test_validation.py::test_probe_errors",
    ],
    "bjepa/diagnostics/calibration.py": [
        "tests/test_mutation_gaps.py", "tests/test_mutation_extra.py",
        "tests/test_diagnostics.py", "-k",
        "not cli and not inference_data and not report_states and not weight_posterior",
    ],
    "bjepa/diagnostics/collapse.py": [
        "tests/test_mutation_extra.py", "tests/test_diagnostics.py", "-k",
        "not cli and not inference_data and not report_states and not weight_posterior "
        "and not psis and not crps and not draws_from and not sample_based",
    ],
    "inference/checkpoint.py": [
        "tests/test_mutation_gaps.py", "tests/test_mutation_extra.py",
        "tests/test_training.py", "tests/test_reliability.py", "-k",
        "not sigkill and not cli and not run_folder and not ctrl_c",
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


def write_config(path: Path, module: str, python: Path, timeout: float) -> None:
    tests = " ".join(f"'{a}'" for a in MODULES[module])
    keep = "|".join(OPERATORS)
    path.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{python} -m pytest -x -q -p no:cacheprovider {tests}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f'exclude-operators = ["^(?!core/({keep})$)"]\n')


def baseline(python: Path, module: str, workdir: Path) -> float:
    """Seconds the unmutated tests take; they must pass."""
    t0 = time.perf_counter()
    r = subprocess.run([str(python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        *MODULES[module]], cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the tests for {module} fail without any mutation:\n{r.stdout[-3000:]}")
    return time.perf_counter() - t0


def summarise(db: Path) -> dict:
    con = sqlite3.connect(db)
    rows = con.execute(
        "select s.module_path, s.operator_name, s.occurrence, s.start_pos_row, "
        "r.test_outcome, r.worker_outcome, r.diff from mutation_specs s "
        "left join work_results r on r.job_id = s.job_id").fetchall()
    con.close()
    out = {"killed": 0, "survived": [], "incompetent": 0, "pending": 0, "skipped": 0}
    for _module, op, occ, line, test, worker, diff in rows:
        if worker == "skipped":
            out["skipped"] += 1
        elif test is None:
            out["pending"] += 1
        elif test == "killed":
            out["killed"] += 1
        elif test == "survived":
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
        base = baseline(python, module, workdir)
        write_config(cfg, module, python, timeout=round(3 * base + 30, 1))
        if args.fresh and db.exists():
            db.unlink()
        if not db.exists():
            sh([cr, "init", str(cfg), str(db)], cwd=workdir)
            sh([str(Path(python).parent / "cr-filter-operators"), str(db), str(cfg)],
               cwd=workdir)
        elif args.recheck_survivors:
            con = sqlite3.connect(db)
            con.execute("delete from work_results where test_outcome = 'survived'")
            con.commit()
            con.close()
        sh([cr, "exec", str(cfg), str(db)], cwd=workdir)
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
