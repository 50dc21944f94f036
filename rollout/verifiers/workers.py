"""Persistent worker processes that run a function with a hard wall-clock timeout.

Why: math-verify's own timeout is `signal.alarm`, which only works on a process's main thread,
and rollout workers are threaded Ray actors; and a pathological sympy simplification can run for
minutes or eat gigabytes. So the work runs in a separate process, on that process's main thread,
and a call that overruns its deadline kills the worker.

Each worker is a fresh interpreter started with `subprocess` (no `fork` of a threaded actor, and
none of multiprocessing's re-import of the caller's `__main__`), talking pickles over a socket
pair. It imports `preload` and reports ready before it takes work, so import time never counts
against a call's deadline; a killed worker's replacement starts at once, in the background, and
is usually ready before the next call. Each worker has an address-space limit, so a memory
blow-up is a MemoryError in the worker, not the actor's death. The pool grows to `size` workers
only when calls really overlap; callers beyond that wait.
"""

from __future__ import annotations

import atexit
import importlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to import its preload (sympy is slow on 2 cores)


class WorkerTimeout(Exception):
    """The call overran its wall-clock limit; its worker was killed."""


class WorkerError(Exception):
    """The function raised in the worker (its type and message are the message), or the worker died."""


# The worker's first lines: take the caller's import path, appended (put first, as PYTHONPATH
# would, a project folder named like a standard module, `operator/`, would shadow it), then serve.
BOOTSTRAP = f"""
import sys
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
sys.path.extend(p for p in conn.recv() if p not in sys.path)
from {__name__} import serve
serve(conn, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
"""


def serve(conn: Connection, memory_bytes: int, parent: int, preload: list[str]) -> None:
    """A worker's main loop: import `preload`, say ready, then run calls until the pipe closes."""
    _die_with_parent(parent)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for name in preload:
        importlib.import_module(name)
    conn.send("ready")
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
            reply = ("error", f"{type(exc).__name__}: {exc}"[:500])
        conn.send(reply)


def _die_with_parent(parent: int) -> None:
    # A worker deep in a sympy computation would outlive a crashed caller until it finished.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the worker still exits at its next read of the closed pipe
    if os.getppid() != parent:
        os._exit(0)  # the caller died before the prctl


class _Worker:
    def __init__(self, memory_bytes: int, preload: tuple[str, ...]) -> None:
        ours, theirs = socket.socketpair()
        # -P and cwd="/": nothing shadows the standard library while the worker starts.
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-c", BOOTSTRAP,
             str(theirs.fileno()), str(memory_bytes), str(os.getpid()), *preload],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd="/",
        )  # fmt: skip
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send([p for p in sys.path if isinstance(p, str)])
        self.ready = False

    def call(self, fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
        if not self.ready:
            if not self.conn.poll(STARTUP_TIMEOUT) or self.conn.recv() != "ready":
                raise WorkerError("worker did not start")
            self.ready = True
        self.conn.send((fn, args))
        if not self.conn.poll(timeout):
            raise WorkerTimeout(f"no answer within {timeout:g} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise WorkerError(value)
        return value

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()


class WorkerPool:
    """Up to `size` worker processes, each with `memory_bytes` of address space."""

    def __init__(self, size: int = 2, memory_bytes: int = 4 << 30, preload: tuple[str, ...] = ()) -> None:
        self._memory_bytes = memory_bytes
        self._preload = preload
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self.started = 0  # workers started so far; tests and metrics read it
        atexit.register(self.close)

    def _start(self) -> _Worker:
        with self._lock:
            self.started += 1
        return _Worker(self._memory_bytes, self._preload)

    def run(self, fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
        """`fn(*args)` in a worker, returning its value; WorkerTimeout or WorkerError otherwise.

        `fn` must be importable by the worker (a module-level function) and `args` must pickle.
        """
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive():
                worker = self._start()
            try:
                value = worker.call(fn, args, timeout)
            except WorkerError:
                self._give_back(worker)
                raise
            except (EOFError, OSError) as exc:  # the worker died (killed, or out of memory in C code)
                self._replace(worker)
                raise WorkerError(f"worker died: {exc!r}") from None
            except BaseException:
                # Timed out or interrupted mid-call: its state is unknown, so it never serves again.
                self._replace(worker)
                raise
            self._give_back(worker)
            return value

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._give_back(self._start())  # imports in the background while the caller moves on

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def close(self) -> None:
        """Stop every idle worker (a busy one is stopped when its process exits)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def warm_up(self) -> None:
        """Start a worker and wait until it is ready, so the first real call pays no imports."""
        self.run(_noop, (), STARTUP_TIMEOUT)


def _noop() -> None:
    return None
