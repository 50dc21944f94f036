"""The code sandbox's solution process: confine this process, run the solution, answer calls.

Started by the test runner (`sandbox_runner.py`) as `python -I -S -B sandbox_solver.py IN OUT`,
with the two ends of its channel as the only open files besides stdout and stderr. Standard
library only. Until the solution runs, this code is trusted; then nothing here is: the solution
can rewrite any of it, which only changes what this process says, and the runner believes
nothing it says but plain values (`sandbox_wire`).

Steps:
1. Die with the runner (`PR_SET_PDEATHSIG`), read the first message: the solution, the seccomp
   filter (BPF built by the caller with libseccomp), the directory it may write, and the
   directories it may read.
2. Landlock (when the kernel has it): read and execute only under the interpreter's and the
   system's library directories, read and write only its own directory; no TCP; and from ABI 6
   no signals or abstract Unix sockets out of its domain. Nothing else of the filesystem (/proc
   included) exists for it. Without Landlock, only the root mode's namespaces and per-run user
   hold the filesystem, and the caller refuses the restricted mode.
3. seccomp: the caller's filter (`sandbox.FILTER`): no new processes or programs, no signals to
   anyone, no ptrace or access to other processes' memory, no sockets, no new session, no
   namespaces, no clearing of the death signal.
4. Run the solution in a fresh module namespace, report its top-level names, then serve the
   runner's calls: call, getattr, iter, next, len, getitem, bool, str, repr. Values that are not
   plain stay here, as handles; after a call, list, dict, set and bytearray arguments are sent
   back, so a solution that works in place is seen to.
"""

import builtins
import ctypes
import os
import signal
import struct
import sys

if __package__:  # imported by the caller, for `landlock_abi`
    from . import sandbox_wire as wire
else:  # run as a script in the sandbox, with -I: its own directory is not on the path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sandbox_wire as wire

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # x86_64 and arm64 alike
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
READ = EXECUTE | READ_FILE | READ_DIR

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def landlock_abi():
    """The kernel's Landlock ABI version; 0 when it has none (or it is switched off)."""
    return max(0, libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                               ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)))


def landlock(read_dirs, write_dir):
    """Restricts this process to reading `read_dirs` and reading and writing `write_dir`."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    handled = (1 << 13) - 1 | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0) | (IOCTL_DEV if abi >= 5 else 0)
    # handled_access_fs, handled_access_net (ABI 4: bind and connect TCP), scoped (ABI 6: abstract
    # Unix sockets and signals); the struct grew with the ABI, so its size says which fields exist
    fields = [handled] + ([3] if abi >= 4 else []) + ([3] if abi >= 6 else [])
    attr = struct.pack(f"={len(fields)}Q", *fields)
    ruleset = _check(libc.syscall(LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)),
                     "landlock_create_ruleset")
    for path, access in [*((d, READ) for d in read_dirs), (write_dir, handled & ~(REFER | EXECUTE))]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
        except OSError:
            continue  # a library directory this system does not have
        try:
            rule = struct.pack("=Qi", access, fd)
            _check(libc.syscall(LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                                rule, ctypes.c_uint32(0)), f"landlock_add_rule {path}")
        finally:
            os.close(fd)
    _check(libc.syscall(LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock_restrict_self")
    os.close(ruleset)
    return abi


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp(bpf):
    """Loads a BPF program (8-byte instructions, as `seccomp_export_bpf` writes them)."""
    if not bpf or len(bpf) % 8:
        raise OSError("no seccomp filter to load")
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = SockFprog(len(bpf) // 8, ctypes.cast(program, ctypes.c_void_p))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


class Objects:
    """Handles for the values that are not plain, by id."""

    def __init__(self):
        self.by_id = {}

    def handle_of(self, value):
        key = id(value)
        self.by_id[key] = value
        return key

    def get(self, key):
        if key not in self.by_id:
            raise KeyError(f"no object {key}")
        return self.by_id[key]


MUTABLE = (list, dict, set, bytearray)


def serve(inp, out, namespace, objects):
    def plain(value):
        return wire.encode(value, objects.handle_of)

    def value_of(data):
        return wire.decode(data, objects.get)

    while True:
        try:
            message = wire.receive(inp)
        except EOFError:
            return
        try:
            op, target = message["op"], objects.get(message["target"])
            if op == "call":
                args = [value_of(a) for a in message["args"]]
                kwargs = {k: value_of(v) for k, v in message["kwargs"].items()}
                result = target(*args, **kwargs)
                after = [plain(a) if type(a) in MUTABLE else None for a in args]
                reply = {"ok": plain(result), "args": after}
            elif op == "getattr":
                reply = {"ok": plain(getattr(target, message["name"]))}
            elif op == "iter":
                reply = {"ok": plain(iter(target))}
            elif op == "next":
                reply = {"ok": plain(next(target))}
            elif op == "len":
                reply = {"ok": plain(len(target))}
            elif op == "getitem":
                reply = {"ok": plain(target[value_of(message["key"])])}
            elif op in ("bool", "str", "repr"):
                reply = {"ok": plain({"bool": bool, "str": str, "repr": repr}[op](target))}
            else:
                raise ValueError(f"unknown op {op!r}")
        except BaseException as e:  # noqa: BLE001 - the runner decides what an error means
            reply = {"raised": [type(e).__name__, str(e)[:2000]]}
        wire.send(out, reply)


def main():
    inp, out = int(sys.argv[1]), int(sys.argv[2])
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return  # the runner died before the death signal was set
    setup = wire.receive(inp)
    os.chdir(setup["workdir"])
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    abi = landlock(setup["read"], setup["workdir"])
    if not abi and setup["need_landlock"]:
        wire.send(out, {"raised": ["SandboxUnavailable", "this kernel has no Landlock"]})
        return
    seccomp(bytes.fromhex(setup["bpf"]))
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    objects = Objects()
    try:
        exec(compile(setup["solution"], "solution.py", "exec"), namespace)  # noqa: S102 - running it is the point
        names = {k: wire.encode(v, objects.handle_of) for k, v in list(namespace.items())
                 if not k.startswith("__") and type(v) is not type(sys)}
        wire.send(out, {"names": names, "landlock": abi})
    except BaseException as e:  # noqa: BLE001 - SystemExit included: the solution did not load
        wire.send(out, {"raised": [type(e).__name__, str(e)[:2000]]})
        return
    serve(inp, out, namespace, objects)


if __name__ == "__main__":
    main()
