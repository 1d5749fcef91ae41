"""Run pytest through ``pytest_server.py`` and exit with its code (cosmic-ray's test command).

    python mutation/pytest_client.py SOCKET_PATH PYTEST_ARGS...

Deliberately imports nothing heavy: it starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    sock_path, args = sys.argv[1], sys.argv[2:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall((json.dumps({"args": args, "cwd": os.getcwd()}) + "\n").encode())
        reply = s.makefile("r").readline()
    if not reply:
        print("the pytest server closed the connection", file=sys.stderr)
        return 3
    rc = json.loads(reply)["rc"]
    return rc if rc >= 0 else 128 - rc  # killed by a signal: report it as a failure


if __name__ == "__main__":
    sys.exit(main())
