"""The code sandbox as a restricted pod runs it, here: a process that is not root.

`python -m tests.unit.restricted_sandbox UID` imports the sandbox as root (this machine's
interpreter lives under root's private home), then becomes UID with no capabilities, no
supplementary groups and `no_new_privs`, as the operator's pods run (a shared /tmp, the same
kernel), and serves `run_python` calls: one JSON line in (solution, tests, timeout, memory), one
out (the result's fields, or the error). Its environment holds `SECRET`, for tests that try to
read the worker's environment."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import sys

from zeroth.rollout.verifiers import sandbox

SECRET = "ZEROTH_TEST_SECRET"


def main() -> None:
    uid = int(sys.argv[1])
    sandbox.seccomp_filter()  # libseccomp is loaded while its files are in reach
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # every capability goes with root
    libc = ctypes.CDLL(None)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as allowPrivilegeEscalation: false
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: setuid cleared it; a pod's process started as the user has it
    os.chdir("/tmp")
    for line in sys.stdin:
        job = json.loads(line)
        try:
            result = dataclasses.asdict(sandbox.run_python(job["solution"], job["tests"], timeout=job["timeout"],
                                                           memory_mib=job["memory_mib"]))
        except Exception as e:  # noqa: BLE001 - the test reads it
            result = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
