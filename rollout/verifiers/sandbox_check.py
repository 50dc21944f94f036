"""Attacks on the code sandbox, run where it really runs: `python -m zeroth.rollout.verifiers.sandbox_check`.

Each attack is a program that answers the tests right only if its attack worked (it tampered,
read, signalled, wrote or reached what it must not), so "no attack passed" means every
protection held on this node, in this pod, in the mode the sandbox picked here. An honest
program must pass. It prints a table and exits 1 when an attack passed or the honest program
failed; `--json` prints the rows as JSON instead. tests/unit/test_sandbox_escapes.py runs the same
attacks on this machine in both modes; tests/e2e/test_containers.py runs this module in a pod the
operator's builder made, under the node's real container runtime and seccomp profile.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import sandbox

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert add(10, 20) == 30\n"
HONEST = "def add(a, b):\n    return a + b\n"
PAYOFF = "\ndef add(a, b):\n    return a + b if WON else 0\n"  # right answers only if the attack WON
SECRET_VAR = "ZEROTH_SANDBOX_CHECK_SECRET"


@dataclass(frozen=True)
class Target:
    """What the attacks aim at: a secret in the worker's environment, a loopback and an outward
    listener, a directory anyone may write, a file name for one sample to leave to the next."""
    secret: str
    loopback_port: int
    host: str
    host_port: int
    open_dir: str
    marker: str


def _try(body: str) -> str:
    """`body`, and WON = True if it ran without an OSError."""
    lines = "".join(f"    {line}\n" for line in body.splitlines())
    return f"try:\n{lines}    WON = True\nexcept OSError:\n    pass\n"


ATTACKS: dict[str, Callable[[Target], str]] = {
    "rebind compile": lambda t: "import builtins\n_c = builtins.compile\n"
                                "builtins.compile = lambda *a, **k: _c('pass', 'x', 'exec')\nWON = False\n",
    "rebind exec": lambda t: "import builtins\nbuiltins.exec = lambda *a, **k: None\nWON = False\n",
    "equal to everything": lambda t: "class Yes:\n    def __eq__(self, other):\n        return True\n"
                                     "    __hash__ = object.__hash__\nWON = False\n"
                                     "def add(a, b):\n    return Yes()\n",
    "int subclass equal to everything": lambda t: "class Int(int):\n    def __eq__(self, other):\n        return True\n"
                                                  "    __hash__ = int.__hash__\nWON = False\n"
                                                  "def add(a, b):\n    return Int(0)\n",
    "hunt the tests": lambda t: (
        "import gc, sys, os\n"
        "def hunt():\n"
        "    needle = 'assert add(2, 3) ' + '== 5'\n"  # not in this source as one string
        "    def found(x, depth=0):\n"
        "        if isinstance(x, str):\n            return x is not needle and needle in x\n"
        "        items = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()\n"
        "        return depth < 3 and any(found(v, depth + 1) for v in list(items))\n"
        "    if any(found(o) for o in gc.get_objects()):\n        return True\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None:\n"
        "        if found(dict(f.f_locals)):\n            return True\n"
        "        f = f.f_back\n"
        "    for root, dirs, files in os.walk('/'):\n"
        "        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ('/proc', '/sys', '/dev')]\n"
        "        for name in files:\n"
        "            path = os.path.join(root, name)\n"
        "            try:\n"
        "                if os.path.isfile(path) and os.path.getsize(path) < 1 << 20 and found(open(path, errors='ignore').read()):\n"
        "                    return True\n"
        "            except Exception:\n                pass\n"
        "    return any(found(x) for x in os.environ.values())\n"
        "WON = hunt()\n"),
    "fork a survivor": lambda t: "import os, time\nWON = False\n" + _try(
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)"),
    "spawn a program": lambda t: "import subprocess\nWON = False\n" + _try(
        "subprocess.Popen(['sleep', '60'], start_new_session=True)"),
    "signal the parents": lambda t: "import os, signal\nWON = False\n" + "".join(
        _try(f"os.kill({pid}, signal.SIGSTOP)") for pid in ("os.getppid()", "1", "-1", "0")),
    "read the worker's environment": lambda t: (
        "import os, glob\nWON = False\n"
        "for path in glob.glob('/proc/*/environ') + ['/proc/1/environ', f'/proc/{os.getppid()}/environ']:\n"
        f"    try:\n        WON = WON or {t.secret!r}.encode() in open(path, 'rb').read()\n"
        "    except OSError:\n        pass\n"
        f"WON = WON or {t.secret!r} in str(os.environ)\n"),
    "ptrace": lambda t: ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nWON = False\n"
                         "for pid in (os.getppid(), 1):\n"
                         "    WON = WON or libc.ptrace(16, pid, 0, 0) == 0\n"  # PTRACE_ATTACH
                         "    try:\n        open(f'/proc/{pid}/mem', 'rb').read(1)\n        WON = True\n"
                         "    except OSError:\n        pass\n"
                         "WON = WON or libc.ptrace(0, 0, 0, 0) == 0\n"),  # PTRACE_TRACEME
    "connect to loopback": lambda t: "import socket\nWON = False\n" + _try(
        f"socket.create_connection(('127.0.0.1', {t.loopback_port}), timeout=2).sendall(b'hi')"),
    "connect outward": lambda t: "import socket\nWON = False\n" + _try(
        f"socket.create_connection(({t.host!r}, {t.host_port}), timeout=2).sendall(b'hi')"),
    "write outside its directory": lambda t: "WON = False\n" + "".join(
        _try(f"open({path!r}, 'w').write('x')")
        for path in (os.path.join(t.open_dir, uuid.uuid4().hex), f"/tmp/{uuid.uuid4().hex}", f"/dev/shm/{uuid.uuid4().hex}")),
    "leave a file for the next sample": lambda t: "import os\nWON = False\n" + "".join(
        f"try:\n    open(os.path.join({d!r}, {t.marker!r}), 'w').write('x')\nexcept OSError:\n    pass\n"
        for d in (".", "/tmp", "/dev/shm", t.open_dir)),
    "find the file of the last sample": lambda t: (
        "import glob, os\n"
        f"WON = any(glob.glob(os.path.join(d, {t.marker!r})) for d in ('/tmp', '/dev/shm', {t.open_dir!r}))\n"
        f"WON = WON or bool(glob.glob('/tmp/*/*/{t.marker}') + glob.glob('/tmp/*/{t.marker}'))\n"),
    "fork bomb": lambda t: "import os\nWON = False\n" + _try("while True:\n    os.fork()"),
    "memory bomb": lambda t: "WON = False\n" + "x = bytearray(64 * 2**30)\nWON = True\n",
    "exit 0 early": lambda t: "import os\nWON = False\nos._exit(0)\n",
    "sleep past the deadline": lambda t: "import time\ntime.sleep(1000)\nWON = True\n",
}


@dataclass(frozen=True)
class Row:
    name: str
    passed: bool  # the tests passed: for an attack, it worked
    verdict: str
    seconds: float


class Targets:
    """Listeners and a shared directory for the attacks; close() stops them."""

    def __init__(self) -> None:
        self.loopback = socket.create_server(("127.0.0.1", 0))
        self.outward = socket.create_server(("0.0.0.0", 0))
        for s in (self.loopback, self.outward):
            s.setblocking(False)
        self.open_dir = tempfile.mkdtemp(prefix="zeroth-open-")
        os.chmod(self.open_dir, 0o777)  # only the sandbox stands between the samples and it
        self.target = Target(secret=os.environ.get(SECRET_VAR, ""), loopback_port=self.loopback.getsockname()[1],
                             host=_outward_address(), host_port=self.outward.getsockname()[1],
                             open_dir=self.open_dir, marker=f"zeroth-{uuid.uuid4().hex}")

    def reached(self) -> list[str]:
        """What reached the listeners or landed in the open directory (nothing, if all held)."""
        out = []
        for name, s in (("loopback", self.loopback), ("outward", self.outward)):
            try:
                s.accept()[0].close()
                out.append(f"a connection reached the {name} listener")
            except BlockingIOError:
                pass
        out += [f"a file landed in the open directory: {p.name}" for p in Path(self.open_dir).iterdir()]
        return out

    def close(self) -> None:
        self.loopback.close()
        self.outward.close()
        for p in Path(self.open_dir).iterdir():
            p.unlink()
        os.rmdir(self.open_dir)


def _outward_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outward interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"  # no route out: the loopback attack covers it


def check(timeout: float = 3.0, memory_mib: int = 256) -> tuple[list[Row], list[str]]:
    """Runs the honest program, then every attack; the rows, and what reached the targets."""
    targets = Targets()
    try:
        rows = []
        for name, program in [("honest", HONEST), *((n, a(targets.target) + PAYOFF) for n, a in ATTACKS.items())]:
            r = sandbox.run_python(program, TESTS, timeout=timeout, memory_mib=memory_mib)
            rows.append(Row(name, r.passed, r.verdict, round(r.seconds, 2)))
        return rows, targets.reached()
    finally:
        targets.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if SECRET_VAR not in os.environ:  # the secret must be in the environment the kernel shows
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *(argv or sys.argv[1:])],
                  {**os.environ, SECRET_VAR: uuid.uuid4().hex})
    rows, reached = check()
    held = rows[0].passed and not any(r.passed for r in rows[1:]) and not reached
    if args.json:
        print(json.dumps({"mode": sandbox.mode(), "landlock": sandbox.landlock_abi(), "held": held,
                          "rows": [r.__dict__ for r in rows], "reached": reached}))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"code sandbox, {sandbox.mode()} mode, Landlock ABI {sandbox.landlock_abi()}")
        for column in ("program", "passed", "verdict", "s"):
            table.add_column(column)
        for r in rows:
            ok = r.passed == (r.name == "honest")
            table.add_row(r.name, f"[{'green' if ok else 'red'}]{r.passed}[/]", r.verdict[:60], str(r.seconds))
        console = Console()
        console.print(table)
        for line in reached:
            console.print(f"[red]{line}[/]")
        console.print("[green]every protection held[/]" if held else "[red]the sandbox did not hold[/]")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
