#!/usr/bin/env python3
"""Runs a command as the child of a child subreaper that reaps every orphan it adopts.

    python hack/subreaper.py COMMAND [ARGS...]

containerd's shims daemonize: the process that started one exits, and the shim is re-parented to
the nearest ancestor that is a child subreaper, or to init. Under `make test` that ancestor is
pytest (tests/procs.py makes it one, to find what tests leave behind), which never waits for
processes it did not start, so every shim that ends stays a zombie until the session does. Run
under this script, containerd's orphans come here instead and are reaped as they end.

SIGTERM and SIGINT are passed on to the command; this script exits with the command's status (or
128 + the signal that ended it) once the command has ended. Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"subreaper: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    while True:
        try:
            child, status = os.wait()  # the command, or any orphan it left to us
        except ChildProcessError:
            return 1
        if child == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
