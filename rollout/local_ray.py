"""A local Ray for `zeroth run`, in a process of its own, started by trainer rank 0.

Why not `ray.init(address="local")` in rank 0 itself: Ray starts its GCS server and raylet in the
process group of the process that starts it, and torchrun stops a rank (Ctrl-C, a pod's SIGTERM)
with `killpg` of that rank's group. The raylet took the SIGTERM meant for rank 0, unregistered its
node and shut down, and rank 0, still finishing its step and checkpoint, lost the GCS and exited:
the step was lost. Here Ray lives in a session of its own (`start` below), so rank 0 finishes its
stop with Ray still up; and it ends with rank 0 however rank 0 ends: this process reads its stdin,
a pipe from rank 0, and shuts Ray down when the pipe closes.

Run as `python -m zeroth.rollout.local_ray SLOTS`: prints the GCS address on one line once Ray is
up, then waits.
"""

from __future__ import annotations

import os
import subprocess
import sys

from zeroth import api


def start(slots: int) -> tuple[str, subprocess.Popen]:
    """A new local Ray with one CPU and one rollout slot per worker; its GCS address, and the
    process holding it (keep it, and its stdin pipe, open for as long as Ray is needed)."""
    # The caller's Ray read RAY_AUTH_MODE when it was imported (`zeroth run` sets "token"): the new
    # Ray takes the same mode, where Ray would otherwise turn token authentication on for a new
    # local cluster and refuse a caller without it.
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    proc = subprocess.Popen([sys.executable, "-m", "zeroth.rollout.local_ray", str(slots)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True, env=env)
    address = proc.stdout.readline().strip()
    if not address:
        raise RuntimeError(f"the local Ray did not start (exit {proc.wait()}); its error is in this log above")
    return address, proc


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Closes the pipe, so the process shuts its Ray down, and waits for it (then kills it)."""
    proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # its Ray's processes share its fate (Ray's own kill-on-parent-death)
        proc.wait()


def main() -> None:
    import ray

    slots = int(sys.argv[1])
    ray.init(address="local", num_cpus=max(slots, 1), resources={api.ROLLOUT_RESOURCE: slots}, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()  # until rank 0 closes the pipe: it ended, whether cleanly, by a signal or killed
    ray.shutdown()


if __name__ == "__main__":
    main()
