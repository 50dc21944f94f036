"""Run untrusted Python (a solution) against trusted tests; the verdict is decided outside it.

Three processes per sample, none of them this one:
- the launcher (`sandbox_launch.py`) confines itself and execs
- the test runner (`sandbox_runner.py`), which starts
- the solution process (`sandbox_solver.py`), which confines itself further, runs the solution,
  and answers the runner's calls over a pipe with plain values (`sandbox_wire.py`).
The tests run in the runner, against proxies of the solution's names; the solution never shares
an interpreter with them, never sees them, and cannot reach the runner's verdict pipe, its memory
or its signals. The verdict is one line the runner writes on a pipe only it holds.

Two modes, by who we are:
- **root** (a developer machine, a privileged node agent): the launcher puts the run in new
  network, mount and IPC namespaces (no network, loopback included; a private 64 MiB tmpfs as
  `/tmp`; `/` read-only), under a per-run UID that nothing else uses (so its processes are
  killed by UID afterwards, and no other user's files or /proc entries are its to read), and the
  solution process adds Landlock and seccomp as below.
- **restricted** (what the operator builds: a non-root pod, capabilities dropped, no
  namespaces): the solution process confines itself with Landlock (read only the interpreter's
  and the system's libraries, read and write only its own fresh directory; nothing else of the
  filesystem exists for it, /proc included; no TCP; from ABI 6 no signals out of its domain) and
  seccomp. Without Landlock this mode is refused (`SandboxUnavailable`), not weakened: the
  score records the error.
In both, the seccomp filter (`seccomp_filter`, built here with libseccomp) denies: new processes
and programs (fork, vfork, clone without CLONE_THREAD, clone3, execve), signals to any process,
ptrace and other processes' memory, pidfds, sockets, new sessions and process groups, namespaces,
mounts, io_uring, bpf, perf, userfaultfd, keyrings, changing the death signal or dumpability, and
scheduling, priority or limits of other processes. So nothing a solution starts can outlive it
(it starts nothing), and a fork bomb is one failed call.

Bounds: the runner gives the solution `timeout` seconds (wall clock) from the moment it sends it
the program, for loading it and answering every call; interpreter start-ups are not charged to
it. Whatever happens, `run_python` returns within `timeout + START_SECONDS`, killing everything
of the sample. Per process: `RLIMIT_AS` (memory), `RLIMIT_CPU`, `RLIMIT_FSIZE` (1 MiB of log),
`RLIMIT_NOFILE`, `RLIMIT_NPROC`, no core dumps, `no_new_privs`; an empty environment.

What it does not defend against: kernel exploits and side channels; reading world-readable files
under the library directories; in root mode without Landlock, reading world-readable files
anywhere; weak tests, which a wrong program can pass.
"""

from __future__ import annotations

import functools
import json
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

from .sandbox_solver import landlock_abi

HERE = Path(__file__).resolve().parent
FILES = ("sandbox_launch.py", "sandbox_runner.py", "sandbox_solver.py", "sandbox_wire.py")
FSIZE_BYTES = 1 << 20
NPROC = 16
UID_RANGE = (1 << 30, 1 << 31)
OUTPUT_TAIL = 2000
START_SECONDS = 10.0  # the launcher's, the runner's and the solution process's start-up


class SandboxUnavailable(RuntimeError):
    """This machine cannot confine a solution in the mode it would run in."""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    timed_out: bool
    verdict: str  # the runner's line: "pass", "fail: ...", "timeout"; "" when it gave none
    output: str  # the tail of the run's stdout and stderr, at most OUTPUT_TAIL characters
    mode: str  # "root" or "restricted"
    landlock: int  # the kernel's Landlock ABI (0: none)
    uid: int | None  # the per-run UID in root mode
    seconds: float


# (name, errno, argument conditions): each denies the call with that errno when all conditions hold
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER = 1, 4, 0x59616D61
DENIED: tuple[tuple[str, int, tuple[tuple[int, str, int, int], ...]], ...] = (
    *((name, EPERM, ()) for name in (
        "fork", "vfork", "execve", "execveat",
        "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
        "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
        "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
        "socket", "socketpair", "setsid", "setpgid", "unshare", "setns",
        "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
        "keyctl", "add_key", "request_key", "setpriority", "ioprio_set", "migrate_pages", "move_pages",
        "name_to_handle_at", "open_by_handle_at", "fanotify_init", "quotactl", "acct", "swapon", "swapoff",
        "reboot", "kexec_load", "init_module", "finit_module", "delete_module")),
    ("clone3", ENOSYS, ()),  # glibc then falls back to clone, whose flags a filter can read
    ("clone", EPERM, ((0, "MASKED_EQ", CLONE_THREAD, 0),)),  # threads only
    *(("prctl", EPERM, ((0, "EQ", option, 0),)) for option in (PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_PTRACER)),
    *((name, EPERM, ((0, "NE", 0, 0),)) for name in (  # only of itself (pid 0)
        "prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")),
)


@functools.cache
def seccomp_filter() -> bytes:
    """`DENIED` as a BPF program (libseccomp's export), for the solution process to load.
    A call from another architecture's ABI (32-bit x86 on x86_64) kills the process."""
    import pyseccomp

    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name, errno, conditions in DENIED:
        args = [pyseccomp.Arg(i, getattr(pyseccomp, op), a, b) for i, op, a, b in conditions]
        f.add_rule(pyseccomp.ERRNO(errno), name, *args)
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def _reachable(path: str, root: bool) -> bool:
    """Whether the sandbox's user can run `path`: any user (root mode: a per-run UID), or we."""
    real = Path(os.path.realpath(path))
    lib = real.parent.parent / "lib"
    if not root:
        return os.access(real, os.X_OK) and os.access(lib, os.R_OK | os.X_OK)
    try:
        return all(p.stat().st_mode & stat.S_IXOTH for p in (real, *real.parents, lib))
    except OSError:
        return False


@functools.cache
def sandbox_python() -> str:
    """The interpreter the sandbox runs: ours, or a system one when the sandbox's user cannot
    reach ours (a virtualenv under a private home directory). Standard library only is needed."""
    root = os.geteuid() == 0
    for candidate in (sys.executable, "/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.isfile(candidate) and _reachable(candidate, root):
            return candidate
    raise SandboxUnavailable("no Python interpreter the sandbox's user can run (standard library only is needed)")


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


def mode() -> str:
    return "root" if os.geteuid() == 0 else "restricted"


def run_python(solution: str, tests: str, *, timeout: float, memory_mib: int) -> SandboxResult:
    """Runs `tests` against `solution` in the sandbox; passed when every test ran to its end."""
    start = time.perf_counter()
    root, abi = os.geteuid() == 0, landlock_abi()
    if not root and abi < 1:
        raise SandboxUnavailable("the code sandbox needs Landlock (Linux 5.13 or later, with landlock among the "
                                 "kernel's LSMs) when it does not run as root; this node has none, so code is "
                                 "not run. Use nodes with Landlock, or a root sandbox")
    uid = secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0] if root else None
    nproc = NPROC + (0 if root else _own_task_count())
    def text(source: str) -> str:  # a lone surrogate cannot be compiled: replaced, as a file write would
        return source.encode("utf-8", errors="replace").decode("utf-8")

    job = json.dumps({"solution": text(solution), "tests": text(tests), "seconds": timeout, "need_landlock": not root,
                      "bpf": seccomp_filter().hex()})
    workdir = Path(tempfile.mkdtemp(prefix="zeroth-sandbox-"))
    verdict_r, verdict_w = os.pipe()
    try:
        for name in FILES:
            shutil.copyfile(HERE / name, workdir / name)
        if uid is not None:
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, uid, uid)
        cpu = int(timeout + START_SECONDS) + 1
        with tempfile.TemporaryFile() as log, tempfile.TemporaryFile() as stdin:
            stdin.write(job.encode())
            stdin.seek(0)
            argv = [sandbox_python(), "-I", "-S", str(workdir / "sandbox_launch.py"), str(uid if uid is not None else -1),
                    str(cpu), str(memory_mib << 20), str(FSIZE_BYTES), str(nproc), str(verdict_w), sandbox_python()]
            proc = subprocess.Popen(argv, cwd=workdir, env={}, stdin=stdin, stdout=log, stderr=log,
                                    pass_fds=(verdict_w,), start_new_session=True, close_fds=True)
            os.close(verdict_w)
            verdict_w = -1
            verdict, ended = _read_verdict(verdict_r, timeout + START_SECONDS)
            _kill_all(proc, uid)
            log.seek(max(0, os.fstat(log.fileno()).st_size - 64 * 1024))
            output = log.read().decode("utf-8", errors="replace")
    finally:
        os.close(verdict_r)
        if verdict_w >= 0:
            os.close(verdict_w)
        shutil.rmtree(workdir, ignore_errors=True)
    if "zeroth-sandbox: cannot confine" in output:
        raise SandboxUnavailable(output.split("zeroth-sandbox: ", 1)[1].splitlines()[0])
    return SandboxResult(passed=verdict == "pass", timed_out=verdict == "timeout" or not ended, verdict=verdict,
                         output=output[-OUTPUT_TAIL:], mode="root" if root else "restricted", landlock=abi, uid=uid,
                         seconds=time.perf_counter() - start)


def _read_verdict(fd: int, seconds: float) -> tuple[str, bool]:
    """The runner's line, and whether it closed the pipe (it ended) within `seconds`."""
    deadline, data = time.monotonic() + seconds, b""
    while len(data) < 4096:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            return data.decode(errors="replace").strip(), False
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace").strip(), True
        data += chunk
    return "", True


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kills the sample's session (the solution process cannot leave it) and, in root mode, every
    process of its UID."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher is not reaped yet, so its group id is still ours
    except ProcessLookupError:
        pass
    if uid is not None:
        # kill(-1) from a process of that UID reaches every process of the UID, and never the sender
        subprocess.run(
            [sandbox_python(), "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
            user=uid, group=uid, extra_groups=[], env={}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", check=False,
        )  # fmt: skip
    proc.wait()
