"""A pytest server for mutation testing: pays the import of torch, Pyro, SciPy, ArviZ, ... once.

Importing the third-party stack takes several seconds, more than most mutants' tests, so
``mutation/run.py`` starts this server and gives cosmic-ray ``pytest_client.py`` as its test
command. For each request the server forks a child that runs ``pytest.main(args)`` in the
requested folder. The parent never imports ``bjepa`` (nor anything from the repository), so
each child imports the repository's modules afresh from disk — with whatever mutation
cosmic-ray has just applied. Bytecode caches are neither written nor left behind, so a
mutated file is always compiled from its source.

    python mutation/pytest_server.py SOCKET_PATH REPO_ROOT [TIMEOUT_SECONDS]
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

PRELOAD = ["numpy", "scipy", "scipy.stats", "scipy.special", "scipy.integrate", "scipy.linalg",
           "torch", "torch.distributions", "pyro", "pyro.infer", "pyro.distributions",
           "pyro.infer.autoguide", "pyro.nn", "matplotlib", "matplotlib.pyplot", "xarray",
           "arviz", "h5netcdf", "tqdm", "pytest"]


def _clear_bytecode(root: Path) -> None:
    for cache in root.rglob("__pycache__"):
        if ".venv" not in cache.parts and ".git" not in cache.parts:
            shutil.rmtree(cache, ignore_errors=True)


def serve(sock_path: str, root: str, timeout: int) -> None:
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    assert not any(m == "bjepa" or m.startswith("bjepa.") for m in sys.modules), \
        "the server must not import the code under test"
    _clear_bytecode(Path(root))
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    print(f"pytest server ready on {sock_path}", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            request = json.loads(conn.makefile("r").readline())
            pid = os.fork()
            if pid == 0:  # child: run the tests, exit with pytest's code
                srv.close()
                signal.alarm(timeout)  # a mutant that hangs is killed (SIGALRM)
                log = os.open(sock_path + ".last.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(log, 1)  # the last run's output, for debugging
                os.dup2(log, 2)
                os.chdir(request["cwd"])
                sys.path.insert(0, request["cwd"])
                import pytest

                try:
                    code = int(pytest.main(request["args"]))
                except BaseException:  # noqa: BLE001 - any crash is a failed test run
                    import traceback

                    traceback.print_exc()
                    code = 3
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            # a client that gave up (its own timeout) must not take the server down
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.sendall((json.dumps({"rc": code}) + "\n").encode())


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 600)
