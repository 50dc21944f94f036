"""Stage 1 of the code sandbox: confine this process, then exec the test runner.

Run by `sandbox.run_python` as `python -I -S sandbox_launch.py UID CPU_S MEMORY_B FSIZE_B NPROC
VERDICT_FD PYTHON`, in a fresh session, with the working directory holding the sandbox's files
(`sandbox.FILES`), an empty environment, the job on stdin (left for the runner) and stdout and
stderr on a log file. Standard library only: anything imported here is gone at the `exec`.

Steps:
1. Root mode (UID >= 0): new network, mount and IPC namespaces. The network namespace has only a
   loopback interface, down: no connection goes anywhere, 127.0.0.1 included. In the mount
   namespace a fresh size-limited tmpfs becomes `/tmp` and the working directory (the files are
   copied in), the other world-writable places get empty read-only tmpfs mounts, and `/` is
   remounted read-only. Then drop to the per-run UID (no supplementary groups), so the run's
   processes are the only ones of that UID and the caller can kill them all by it.
   Restricted mode (UID -1, a non-root pod): no namespaces (the pod's seccomp profile refuses
   them); the solution process confines itself with Landlock and seccomp (sandbox_solver.py).
2. `no_new_privs`: setuid binaries cannot give privileges back, and seccomp and Landlock may load.
3. rlimits: CPU seconds, address space, file size (the log), open files, processes, no core dumps.
4. exec `PYTHON -I -S -B sandbox_runner.py VERDICT_FD`.
"""

import ctypes
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
FILES = ("sandbox_runner.py", "sandbox_solver.py", "sandbox_wire.py")
COVERED = ("/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")  # world-writable besides /tmp
TMPFS_SIZE = "64m"

libc = ctypes.CDLL(None, use_errno=True)


def _call(fn, *args):
    if fn(*args) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _mount(source, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _call(libc.mount, enc(source), enc(target), enc(fstype), flags, enc(data))


def _private_filesystem(uid):
    files = {}
    for name in FILES:
        with open(name, "rb") as f:
            files[name] = f.read()
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing we mount leaks to the host
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={TMPFS_SIZE},mode=0700,uid={uid},gid={uid}")
    for path in COVERED:
        if os.path.isdir(path) and not os.path.islink(path):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    try:
        _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    except OSError:
        pass  # the covered paths and the UID still hold; a read-only root is the extra layer
    os.chdir("/tmp")
    for name, data in files.items():
        with open(name, "wb") as f:
            f.write(data)
        os.chown(name, uid, uid)


def main():
    uid, cpu, memory, fsize, nproc, verdict_fd = (int(a) for a in sys.argv[1:7])
    python = sys.argv[7]
    if uid >= 0:
        try:
            _call(libc.unshare, CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC)
            _private_filesystem(uid)
        except OSError as e:  # root without CAP_SYS_ADMIN (a container): the caller says so
            print(f"zeroth-sandbox: cannot confine: root, but no namespaces here ({e})", file=sys.stderr, flush=True)
            sys.exit(70)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _call(libc.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for limit, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU first, so the caller can tell a CPU timeout
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, nproc, nproc),
    ):
        resource.setrlimit(limit, (soft, hard))
    os.umask(0o077)
    os.execv(python, [python, "-I", "-S", "-B", "sandbox_runner.py", str(verdict_fd)])


if __name__ == "__main__":
    main()
