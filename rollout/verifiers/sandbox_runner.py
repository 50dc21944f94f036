"""The code sandbox's test runner: runs the tests here, the solution in a process of its own.

Started by the launcher (`sandbox_launch.py`) as `python -I -S -B sandbox_runner.py`, confined as
the launcher left it, with the job on stdin (JSON: solution, tests, seconds, seccomp filter) and
the verdict pipe's descriptor as its argument. Standard library only.

The verdict is decided here and only here: the solution runs in another process
(`sandbox_solver.py`), which this one makes non-dumpable-to-it (`PR_SET_DUMPABLE` 0: no ptrace, no
/proc/PID/mem or fd of this process for anyone of its user) and which its seccomp filter and
Landlock keep from signalling, tracing or reading anything of this process. The tests run here,
against proxies: each top-level name of the solution is its plain value, or a `Remote` whose
calls, attributes, iteration, length, indexing, truth and text are asked of the solution
process. What comes back is decoded into plain values (`sandbox_wire`), so a result compares as
exactly the value it is; a `Remote` compares equal only to itself, and neither equality nor
containment is ever asked of the solution (it would see the expected value and agree). An
exception the solution raised is raised here as the builtin exception of that name (else
`RemoteError`), so tests that expect one can catch it.

The verdict, one line on that descriptor: `pass` when every test ran to its end; else `fail: why`,
or `timeout` when the solution did not answer before the deadline (the tests' own time is
bounded by the caller's outer kill). Nothing else writes to it: the solution process
never inherits it.
"""

import builtins
import ctypes
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_wire as wire  # noqa: E402

PR_SET_DUMPABLE = 4

# read-only for the solution: the interpreter's files and the system's shared libraries
LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib")


class RemoteError(Exception):
    """The solution raised an exception that is not a builtin one."""


class Channel:
    """Questions to the solution process. A failure of the channel itself (no answer by the
    deadline, the process gone, a reply that breaks the wire) is kept in `broken`: the verdict
    fails even if the tests catch the exception."""

    def __init__(self, to_solver, from_solver, deadline):
        self.to, self.frm, self.deadline = to_solver, from_solver, deadline
        self.broken = None

    def ask(self, message):
        if self.broken is not None:
            raise self.broken
        try:
            wire.send(self.to, message)
            reply = wire.receive(self.frm, self.deadline)
            if type(reply) is not dict:
                raise wire.WireError("a reply that is not an object")
        except (TimeoutError, EOFError, OSError, wire.WireError) as e:
            self.broken = e
            raise
        if "raised" in reply:
            raise _exception(reply["raised"])
        if "ok" not in reply:
            raise wire.WireError("a reply without a value")
        return reply

    def value(self, data):
        try:
            return wire.decode(data, lambda key: Remote(self, key))
        except wire.WireError as e:
            self.broken = e
            raise


def _exception(raised):
    name, text = (raised + ["", ""])[:2] if type(raised) is list else ("", "")
    name, text = str(name)[:200], str(text)[:2000]
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception) and kind is not wire.WireError:
        try:
            return kind(text)
        except Exception:  # noqa: BLE001 - an exception class that takes other arguments
            pass
    return RemoteError(f"{name}: {text}")


class Remote:
    """An object that lives in the solution process. Equal only to itself."""

    __slots__ = ("_channel", "_key")

    def __init__(self, channel, key):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_key", key)

    def _ask(self, op, **fields):
        return self._channel.ask({"op": op, "target": self._key, **fields})

    def __call__(self, *args, **kwargs):
        reply = self._ask("call", args=[_out(a) for a in args], kwargs={str(k): _out(v) for k, v in kwargs.items()})
        after = reply.get("args")
        if type(after) is list and len(after) == len(args):
            for arg, new in zip(args, after):
                if new is not None and type(arg) in (list, dict, set, bytearray):
                    _update(arg, self._channel.value(new))
        return self._channel.value(reply["ok"])

    def __getattr__(self, name):
        return self._channel.value(self._ask("getattr", name=name)["ok"])

    def __iter__(self):
        iterator = self._channel.value(self._ask("iter")["ok"])
        if type(iterator) is not Remote:
            raise RemoteError("iter() gave a plain value")
        while True:
            try:
                yield iterator._channel.value(iterator._ask("next")["ok"])
            except StopIteration:
                return

    def __len__(self):
        n = self._channel.value(self._ask("len")["ok"])
        if type(n) is not int or n < 0:
            raise RemoteError("len() gave something that is not a length")
        return n

    def __getitem__(self, key):
        return self._channel.value(self._ask("getitem", key=_out(key))["ok"])

    def __bool__(self):
        return self._channel.value(self._ask("bool")["ok"]) is True

    def __str__(self):
        return str(self._channel.value(self._ask("str")["ok"]))

    def __repr__(self):
        return str(self._channel.value(self._ask("repr")["ok"]))

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return hash(("remote", self._key))


def _out(value):
    """A value of the tests for the solution: plain data, or a handle it gave us."""
    def refuse(v):
        raise TypeError(f"a {type(v).__name__} cannot be passed to the solution (plain values only)")
    if type(value) is Remote:
        return {"h": value._key}
    return wire.encode(value, refuse)


def _update(arg, new):
    """The solution changed an argument in place: so does the tests' copy."""
    if type(new) is not type(arg):
        return
    if type(arg) in (list, bytearray):
        arg[:] = new
    else:
        arg.clear()
        arg.update(new)


def verdict(text):
    os.write(int(sys.argv[1]), (text.replace("\n", " ")[:1000] + "\n").encode())


def main():
    job = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    workdir = os.path.abspath("work")
    os.mkdir(workdir, 0o700)
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    here = os.path.dirname(os.path.abspath(__file__))
    solver = subprocess.Popen([sys.executable, "-I", "-S", "-B", os.path.join(here, "sandbox_solver.py"),
                               str(to_r), str(from_w)], pass_fds=(to_r, from_w), stdin=subprocess.DEVNULL,
                              close_fds=True)
    os.close(to_r)
    os.close(from_w)
    started = time.monotonic()
    channel = Channel(to_w, from_r, started + float(job["seconds"]))
    read = sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *LIBRARY_DIRS})
    try:
        wire.send(to_w, {"solution": job["solution"], "bpf": job["bpf"], "workdir": workdir, "read": read,
                         "need_landlock": job["need_landlock"]})
        hello = wire.receive(from_r, channel.deadline)
        if type(hello) is not dict or "names" not in hello or type(hello["names"]) is not dict:
            raise _exception(hello.get("raised")) if type(hello) is dict and "raised" in hello else wire.WireError("no names")
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        namespace.update({str(k): channel.value(v) for k, v in hello["names"].items()})
        exec(compile(job["tests"], "tests.py", "exec"), namespace)  # noqa: S102 - the gold tests
        if channel.broken is not None:
            raise channel.broken
    except TimeoutError:
        verdict("timeout")
    except BaseException as e:  # noqa: BLE001 - any failure of the tests is a failed sample
        verdict(f"fail: {type(e).__name__}: {e}")
    else:
        verdict("pass")
    finally:
        solver.kill()
        solver.wait()


if __name__ == "__main__":
    main()
