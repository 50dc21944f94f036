"""Stage 1 of the code sandbox: confine this process, then exec the harness as an unprivileged user.

Run by `sandbox.run_python` as `python -I -S sandbox_launch.py UID CPU_S MEMORY_B FSIZE_B NPROC
NAMESPACES PYTHON`, in a fresh session, with the working directory holding `harness.py`, `solution.py`
and `tests.py`, an empty environment, and stdout/stderr on a log file. Standard library only, and
no imports beyond what the steps need: anything imported here is gone at the `exec`.

Steps, each best effort where the kernel or the pod's seccomp profile may refuse:
1. If root and NAMESPACES: new network and mount namespaces. The network namespace has only a
   loopback interface, down: no connection goes anywhere, 127.0.0.1 included. In the mount
   namespace a fresh size-limited tmpfs becomes `/tmp` and the working directory (the files are
   copied in), the other world-writable places get empty read-only tmpfs mounts, and `/` is
   remounted read-only, so the program can write nowhere but its own small tmpfs.
   If not root: try an unprivileged user namespace with a network namespace (works where user
   namespaces are allowed; a restricted pod's default seccomp profile forbids it).
2. If root: drop to the per-run UID (no supplementary groups), so process limits count this run
   alone and the caller can kill every process of the run by its UID.
3. `no_new_privs`: setuid binaries cannot give privileges back.
4. rlimits: CPU seconds, address space, file size, open files, processes, no core dumps.
5. The first line of the log says which isolation applied; then exec `PYTHON -I harness.py`,
   with `--guard` (the audit-hook network block) when no network namespace could be made.
"""

import ctypes
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
FILES = ("harness.py", "solution.py", "tests.py")
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
    owner = f",uid={uid},gid={uid}" if uid >= 0 else ""
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={TMPFS_SIZE},mode=0700{owner}")
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


def main():
    uid, cpu, memory, fsize, nproc, namespaces = (int(a) for a in sys.argv[1:7])
    python = sys.argv[7]
    root = os.geteuid() == 0
    net = fs = False
    if namespaces and root:
        try:
            _call(libc.unshare, CLONE_NEWNET | CLONE_NEWNS)
            net = True
            _private_filesystem(uid)
            fs = True
        except OSError:
            if not net:
                try:
                    _call(libc.unshare, CLONE_NEWNET)
                    net = True
                except OSError:
                    pass
    elif namespaces:
        try:
            _call(libc.unshare, CLONE_NEWUSER | CLONE_NEWNET)
            net = True
        except OSError:
            pass
    if root and uid >= 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
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
    print(f"zeroth-sandbox: network={'namespace' if net else 'audit-hook'} "
          f"filesystem={'private' if fs else 'shared'} uid={os.getuid()}", file=sys.stderr, flush=True)  # fmt: skip
    os.execv(python, [python, "-I", "harness.py"] + ([] if net else ["--guard"]))


if __name__ == "__main__":
    main()
