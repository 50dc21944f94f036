"""Stage 2 of the code sandbox: run `solution.py` then `tests.py` in one namespace; print a token.

Copied into the sandbox as `harness.py` and run as `python -I harness.py [--guard]`. The caller
writes a random token on stdin; the harness reads it, puts /dev/null on stdin, runs the solution
and then the tests, and prints the token only if both ran to their end. The files are deleted
before the solution runs, so it cannot read the tests (and their expected values) from disk.
Success is exit status 0 AND the token, so a solution that calls `sys.exit(0)` or `os._exit(0)`
before the tests run fails. Code in the same process can still find the token by walking this harness's frames: that
is in-process tampering, which no in-process check stops (see sandbox.py).

`--guard` (when the launcher could not make a network namespace) installs an audit hook, before
any untrusted code runs, that refuses sockets, new processes, and the modules that reach around
audit hooks (ctypes, _posixsubprocess). PEP 578 says plainly that audit hooks are not a sandbox;
this is a speed bump for the obvious paths, and the sandbox's docstring says so.
"""

import os
import sys

BLOCKED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                  "os.fork", "os.forkpty", "pty.", "ctypes.")  # fmt: skip
BLOCKED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "socket", "_socket"})


def _guard(event, args):
    if event.startswith(BLOCKED_EVENTS) or (event == "import" and args[0] in BLOCKED_MODULES):
        raise PermissionError(f"blocked in the sandbox: {event} {args[0] if args else ''}")


def _run():
    token = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sources = []
    for name in ("solution.py", "tests.py"):
        with open(name, encoding="utf-8", errors="replace") as f:
            sources.append((name, f.read()))
    for name in ("solution.py", "tests.py", "harness.py"):
        os.unlink(name)  # so the solution cannot read the tests' expected values from disk
    if "--guard" in sys.argv:
        sys.addaudithook(_guard)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for name, source in sources:
        exec(compile(source, name, "exec"), namespace)  # noqa: S102 - running it is the point
    sys.stdout.flush()
    sys.stdout.write(f"\n{token}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _run()
