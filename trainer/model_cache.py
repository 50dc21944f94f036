"""Hub models downloaded once into the cache a run's pods share (`spec.modelCache`).

The operator mounts the model-cache claim in every trainer and rollout pod and sets
`ZEROTH_MODEL_CACHE` to its mount and `HF_HOME` to `ZEROTH_MODEL_CACHE/huggingface`. Every trainer
process resolves the model before its first collective (`models.resolve`); with the cache set, a
hub model goes through `cached_snapshot`: the first process to take the model's lock downloads the
snapshot (`huggingface_hub.snapshot_download`) and then writes a completion marker; every other
process, in any pod, waits on the lock, finds the marker and loads the same folder, with no network
call at all. Rank 0 passes that folder's path to the rollout actors, whose pods mount the claim at
the same place. Gang restarts, resumes and later runs on the same claim find the marker at once.

What it defends against: N pods (and G processes in each) fetching the same model at once on a
fresh claim, each a full download (huggingface_hub locks each file, so they would not corrupt one
another, but every process would still fetch everything); a process killed mid-download (its lock
dies with it and there is no marker, so the next process downloads again, resuming what
huggingface_hub kept); a half-written marker (written to a temporary file and renamed).

What it does not: the lock is a POSIX record lock (`fcntl.lockf`), which NFS (v4, or v3 with lockd)
and CephFS honour across nodes; a ReadWriteMany volume whose driver does not (some FUSE filesystems)
gives each node its own download, no worse than no lock. A branch (`revision: main`) is resolved
once per cache: later runs load the commit the first one fetched until the marker is deleted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_VAR = "ZEROTH_MODEL_CACHE"
MARKERS = ".zeroth/hub"  # under the cache: one lock and one marker per (repo, revision)


def _hub_download(repo_id: str, revision: str) -> str:
    """The snapshot folder of `repo_id` at `revision`, fetched into HF_HOME's hub cache."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=repo_id, revision=revision)


def cache_root() -> Path | None:
    """The shared model cache of this pod, when the run has one (`$ZEROTH_MODEL_CACHE`)."""
    value = os.environ.get(CACHE_VAR)
    return Path(value) if value else None


def _key(repo_id: str, revision: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{repo_id}@{revision}")


def cached_snapshot(repo_id: str, revision: str, root: Path,
                    download: Callable[[str, str], str] | None = None) -> Path:
    """The local folder of `repo_id` at `revision` in the cache at `root`: downloaded by this process
    if no process has yet (under the model's lock), else waited for and reused."""
    download = download or _hub_download
    markers = root / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    marker = markers / f"{_key(repo_id, revision)}.json"
    found = _read_marker(marker, root)
    if found is not None:
        return found
    with open(markers / f"{_key(repo_id, revision)}.lock", "a+") as lock:
        log.info("waiting for the lock on %s@%s in %s (another pod may be downloading it)", repo_id, revision, root)
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX)  # no timeout: a large model takes as long as it takes
            locked = True
        except OSError as e:  # NFS without lockd, some FUSE filesystems: no locks to be had
            log.warning("the model cache %s cannot lock files (%s): downloading without the lock; pods may "
                        "download the model twice", root, e)
            locked = False
        try:
            found = _read_marker(marker, root)
            if found is not None:
                return found
            log.info("downloading %s@%s into the model cache %s, once for every pod", repo_id, revision, root)
            path = Path(download(repo_id, revision))
            _write_marker(marker, path, root)
            return path
        finally:
            if locked:
                fcntl.lockf(lock, fcntl.LOCK_UN)


def _read_marker(marker: Path, root: Path) -> Path | None:
    """The snapshot folder a finished download recorded, when it is still there."""
    try:
        recorded = json.loads(marker.read_text())["path"]
    except (FileNotFoundError, ValueError, KeyError):
        return None
    path = root / recorded  # relative to the cache: the claim may be mounted elsewhere in another run
    return path if path.is_dir() else None


def _write_marker(marker: Path, path: Path, root: Path) -> None:
    try:
        recorded = str(path.resolve().relative_to(root.resolve()))
    except ValueError:  # HF_HOME outside the cache: record where it is
        recorded = str(path.resolve())
    fd, tmp = tempfile.mkstemp(prefix=f".{marker.name}-", dir=marker.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"path": recorded}, f)
    os.replace(tmp, marker)
