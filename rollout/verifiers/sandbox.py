"""Run untrusted Python (a solution, then its tests) in a confined subprocess; report pass or fail.

Two stages (`sandbox_launch.py` confines, `sandbox_harness.py` runs the code). No `preexec_fn`:
it can deadlock a threaded caller (a Ray actor), so every step after `fork` happens in the
launcher, a fresh interpreter, before it `exec`s the harness.

What it defends against, on a Linux host where the caller is root (this development machine, a
privileged node agent):
- Network: a new network namespace with no usable interface; nothing is reachable, loopback
  included.
- Files: a private mount namespace; the program's working directory is a fresh 64 MiB tmpfs on
  `/tmp`, other world-writable places are covered read-only, `/` is remounted read-only, and the
  program runs as a per-run unprivileged UID, so it can neither write nor read root's files.
- Processes: that per-run UID carries `RLIMIT_NPROC` (a fork bomb stops at `nproc` processes),
  and afterwards every process of that UID is killed with `kill(-1)` sent as the UID, which
  catches children that left the process group with `setsid`. The same UID is never reused
  at once (random in [2^30, 2^31)).
- Time and memory: wall-clock limit (the whole run), `RLIMIT_CPU`, `RLIMIT_AS` per process,
  `RLIMIT_FSIZE` (1 MiB: also caps stdout and stderr, which go to a file), `RLIMIT_NOFILE`, no
  core dumps; `no_new_privs`, so setuid binaries give nothing back; an empty environment; stdin
  closed; the temporary directory deleted afterwards.
- Cheating the check: success needs exit status 0 and a per-run random token that the harness
  prints after the tests, so `sys.exit(0)` or `os._exit(0)` inside the solution fails; the
  source files are deleted before the solution runs, so it cannot read the tests from disk.

The program runs under the caller's interpreter, or under a system `python3` when the caller's
is out of reach for the per-run UID (a virtualenv under a 0700 home, as on this machine): test
code should need the standard library only.

What it does NOT defend against:
- In-process tampering: the solution shares the interpreter with the tests, so it can rebind
  what the tests call, trace and skip their lines, or read the token from the harness's frames.
  Treat a passing score as "the tests passed in a process the solution controlled".
- Memory across processes: `RLIMIT_AS` is per process, so `nproc` processes may together hold
  `nproc * memory` (no cgroup here); the pod's memory limit is the real bound.
- Kernel exploits, side channels, reading world-readable files on the host.
- When not root (a restricted pod): no UID switch, so `RLIMIT_NPROC` counts all the pod user's
  processes (the caller's count is added), and a child that calls `setsid` escapes the group
  kill; the network namespace needs unprivileged user namespaces, which a restricted pod's
  seccomp profile forbids; then an audit hook refuses sockets, subprocesses and ctypes, which
  PEP 578 itself says is not a security boundary, and nothing stops writes to world-writable
  paths. Run rollout pods under gVisor (`runtimeClassName`) for a real boundary there. The first
  line of the log and `SandboxResult.network` / `.filesystem` say which case applied.
"""

from __future__ import annotations

import functools
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FSIZE_BYTES = 1 << 20
NPROC = 16
UID_RANGE = (1 << 30, 1 << 31)
OUTPUT_TAIL = 2000


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    timed_out: bool
    returncode: int | None
    output: str  # the tail of stdout and stderr, at most OUTPUT_TAIL characters
    network: str  # "namespace" or "audit-hook" ("" if the launcher never reported)
    filesystem: str  # "private" (own tmpfs, read-only root) or "shared"
    uid: int | None  # the per-run UID, when the caller was root
    seconds: float


def _world_reachable(path: str | Path) -> bool:
    """Whether any user can reach `path` and run (or search) it: it and every ancestor o+x."""
    real = Path(os.path.realpath(path))
    try:
        return all(p.stat().st_mode & stat.S_IXOTH for p in (real, *real.parents))
    except OSError:
        return False


@functools.cache
def sandbox_python() -> str:
    """The interpreter the sandbox runs: ours, or a system one when ours is out of reach for
    an unprivileged UID (a virtualenv under a private home directory)."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, "/usr/local/bin/python3", "/usr/bin/python3"):
        prefix = Path(os.path.realpath(candidate)).parent.parent  # its lib/ lives there
        if os.path.isfile(candidate) and _world_reachable(candidate) and _world_reachable(prefix):
            return candidate
    return sys.executable  # exec will fail as the UID; the run then scores 0 with the reason logged


def _own_task_count() -> int:
    # Threads count towards RLIMIT_NPROC too, so count tasks, not processes.
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def run_python(
    solution: str,
    tests: str,
    *,
    timeout: float,
    memory_mib: int,
    namespaces: bool = True,
    nproc: int = NPROC,
) -> SandboxResult:
    """Run `solution` then `tests` in the sandbox; passed when both ran to the end.

    `namespaces=False` skips the network and mount namespaces (tests use it to exercise the
    audit-hook fallback that applies where namespaces are refused).
    """
    start = time.perf_counter()
    root = os.geteuid() == 0
    uid = secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0] if root else None
    if not root:
        nproc += _own_task_count()
    token = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="zeroth-sandbox-"))
    try:
        (workdir / "harness.py").write_bytes((HERE / "sandbox_harness.py").read_bytes())
        (workdir / "solution.py").write_text(solution, encoding="utf-8", errors="replace")
        (workdir / "tests.py").write_text(tests, encoding="utf-8", errors="replace")
        if uid is not None:
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, uid, uid)
        with tempfile.TemporaryFile() as log:
            argv = [sys.executable, "-I", "-S", str(HERE / "sandbox_launch.py"),
                    str(uid if uid is not None else -1), str(int(timeout) + 1), str(memory_mib << 20),
                    str(FSIZE_BYTES), str(nproc), str(int(namespaces)), sandbox_python()]  # fmt: skip
            proc = subprocess.Popen(argv, cwd=workdir, env={}, stdin=subprocess.PIPE, stdout=log,
                                    stderr=log, start_new_session=True, close_fds=True)  # fmt: skip
            timed_out = False
            try:
                proc.stdin.write(f"{token}\n".encode())
                proc.stdin.close()
            except OSError:
                pass  # it died before reading: the result says why
            timed_out = not _exited(proc, max(0.0, timeout - (time.perf_counter() - start)))
            _kill_all(proc, uid)
            returncode = proc.returncode
            timed_out = timed_out or returncode == -signal.SIGXCPU
            log.seek(0)
            first = log.readline(512).decode("utf-8", errors="replace")
            log.seek(max(0, os.fstat(log.fileno()).st_size - 64 * 1024))
            lines = log.read().decode("utf-8", errors="replace").splitlines()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reported = first.startswith("zeroth-sandbox:")
    facts = dict(kv.split("=", 1) for kv in first.split() if "=" in kv) if reported else {}
    passed = returncode == 0 and not timed_out and token in lines
    output = "\n".join(line for line in lines if line != token and not line.startswith("zeroth-sandbox:"))
    return SandboxResult(
        passed=passed,
        timed_out=timed_out,
        returncode=returncode,
        output=output[-OUTPUT_TAIL:],
        network=facts.get("network", ""),
        filesystem=facts.get("filesystem", ""),
        uid=uid,
        seconds=time.perf_counter() - start,
    )


def _exited(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether the launcher exited within `timeout`, WITHOUT reaping it: while it is a zombie its
    pid, and so its process group id, cannot be reused, so the group kill that follows cannot hit
    a stranger. A pidfd also wakes at once, where `Popen.wait` polls in up to 50 ms steps."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: plain wait (and a tiny reuse window)
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the run's process group, and with a per-run UID every process that UID owns."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if uid is not None:
        # kill(-1) from a process of that UID reaches every process of the UID, in one atomic
        # sweep (new forks wait for it), and never the sender itself.
        subprocess.run(
            [sandbox_python(), "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
            user=uid, group=uid, extra_groups=[], env={}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", check=False,
        )  # fmt: skip
    proc.wait()
