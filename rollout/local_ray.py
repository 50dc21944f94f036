"""A local Ray for `zeroth run`, in a process of its own, started by trainer rank 0.

Why not `ray.init(address="local")` in rank 0 itself: Ray starts its GCS server and raylet in the
process group of the process that starts it, and torchrun stops a rank (Ctrl-C, a pod's SIGTERM)
with `killpg` of that rank's group. The raylet took the SIGTERM meant for rank 0, unregistered its
node and shut down, and rank 0, still finishing its step and checkpoint, lost the GCS and exited:
the step was lost. Here Ray lives in a session of its own (`start` below), so rank 0 finishes its
stop with Ray still up. It does not outlive rank 0: this process watches its stdin, a pipe from
rank 0, from its first moment; when the pipe closes (rank 0 ended, cleanly, by a signal or killed)
it shuts Ray down, or, if Ray is still starting, kills its whole session.

Run as `python -m zeroth.rollout.local_ray SLOTS`: prints the GCS address on one line once Ray is
up, then waits.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading

from zeroth import api

START_SECONDS = 300.0  # Ray's own start on a loaded CPU takes seconds; a start this long is a hang


def start(slots: int, timeout: float = START_SECONDS) -> tuple[str, subprocess.Popen]:
    """A new local Ray with one CPU and one rollout slot per worker; its GCS address, and the
    process holding it (keep it, and its stdin pipe, open for as long as Ray is needed)."""
    # The caller's Ray read RAY_AUTH_MODE when it was imported (`zeroth run` sets "token"): the new
    # Ray takes the same mode, where Ray would otherwise turn token authentication on for a new
    # local cluster and refuse a caller without it.
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    proc = subprocess.Popen([sys.executable, "-m", "zeroth.rollout.local_ray", str(slots)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    address = proc.stdout.readline().strip() if ready else ""
    if not address:
        running = proc.poll() is None
        _kill_session(proc)
        raise RuntimeError(f"the local Ray did not start within {timeout:.0f} s" if running else
                           f"the local Ray did not start (exit {proc.returncode}); its error is in this log above")
    return address, proc


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Closes the pipe, so the process shuts its Ray down, and waits for it (then kills them all)."""
    proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL to the process and its Ray's GCS server and raylet (its process group; Ray's workers,
    in groups of their own, end with their raylet)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main() -> None:
    closed = threading.Event()
    up = threading.Event()

    def watch() -> None:
        sys.stdin.read()  # until rank 0 closes the pipe
        closed.set()
        if not up.is_set():
            os.killpg(0, signal.SIGKILL)  # Ray half started: it and this process, at once

    threading.Thread(target=watch, daemon=True).start()
    import ray

    slots = int(sys.argv[1])
    ray.init(address="local", num_cpus=max(slots, 1), resources={api.ROLLOUT_RESOURCE: slots}, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    up.set()
    try:
        print(ray.get_runtime_context().gcs_address, flush=True)
    except BrokenPipeError:
        pass  # rank 0 is gone already
    closed.wait()
    ray.shutdown()


if __name__ == "__main__":
    main()
