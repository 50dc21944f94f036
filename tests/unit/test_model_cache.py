"""A hub model downloaded once into the cache a run's pods share (trainer/model_cache.py), with no hub:
the download itself is replaced by a copy of a local tiny model into the hub cache's layout; the
lock, the marker, `models.resolve` and the loading through `from_pretrained` are the real ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.tiny import save_random_tiny
from zeroth.api import ModelSpec
from zeroth.trainer import model_cache, models

# One trainer or rollout process of a pod: the download is a slow copy of the tiny model (slow, so
# that the other process arrives while it runs), counted in COUNTER; everything else is real.
PROCESS = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    from zeroth.api import ModelSpec
    from zeroth.trainer import model_cache, models

    source, counter, ready, go = sys.argv[1:5]

    def download(repo_id, revision):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        dest = Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / "0123abc"
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return str(dest)

    model_cache._hub_download = download
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    print(models.resolve(ModelSpec(name="acme/tiny-model", revision="main")))
""")


def _start(tmp: Path, cache: Path, source: Path, n: int) -> list[str]:
    """Runs `n` processes sharing `cache`, released together; their resolved paths."""
    env = {**os.environ, "ZEROTH_MODEL_CACHE": str(cache), "HF_HOME": str(cache / "huggingface"), "HF_HUB_OFFLINE": "1"}
    go = tmp / f"go-{time.monotonic_ns()}"
    ready = [tmp / f"ready-{go.name}-{i}" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, str(source), str(tmp / "downloads"), str(ready[i]), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip().splitlines()[-1])
    return outs


def _downloads(tmp: Path) -> int:
    counter = tmp / "downloads"
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_concurrent_pods_download_a_model_once_and_every_later_one_reuses_it(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = save_random_tiny(tmp_path / "tiny")
    cache = tmp_path / "claim"
    first = _start(tmp_path, cache, source, 2)
    assert _downloads(tmp_path) == 1, "two processes on one cache each downloaded the model"
    assert first[0] == first[1] and Path(first[0]).is_relative_to(cache / "huggingface" / "hub")
    # a gang restart or a resume: found at once, no download
    assert _start(tmp_path, cache, source, 1) == [first[0]] and _downloads(tmp_path) == 1
    # what rank 0 passes to the rollout actors loads as the engine and the trainer load it
    model = AutoModelForCausalLM.from_pretrained(first[0], revision="main")
    assert model.num_parameters() == AutoModelForCausalLM.from_pretrained(source).num_parameters()
    assert AutoTokenizer.from_pretrained(first[0], revision="main").get_vocab() == AutoTokenizer.from_pretrained(source).get_vocab()


def test_a_download_that_dies_leaves_no_marker_and_the_next_process_downloads_again(tmp_path):
    calls = []

    def dies(repo_id, revision):
        calls.append("dies")
        raise ConnectionError("the hub went away")

    def works(repo_id, revision):
        calls.append("works")
        (tmp_path / "snap").mkdir(exist_ok=True)
        return str(tmp_path / "snap")

    with pytest.raises(ConnectionError):
        model_cache.cached_snapshot("acme/m", "v1", tmp_path / "c", download=dies)
    assert model_cache.cached_snapshot("acme/m", "v1", tmp_path / "c", download=works) == tmp_path / "snap"
    assert model_cache.cached_snapshot("acme/m", "v1", tmp_path / "c", download=works) == tmp_path / "snap"
    assert calls == ["dies", "works"]
    # another revision is another download
    model_cache.cached_snapshot("acme/m", "v2", tmp_path / "c", download=works)
    assert calls == ["dies", "works", "works"]


def test_the_marker_holds_where_the_claim_is_mounted_elsewhere(tmp_path):
    def download(repo_id, revision):
        path = tmp_path / "a" / "huggingface" / "hub" / "snap"
        path.mkdir(parents=True)
        return str(path)

    model_cache.cached_snapshot("acme/m", "main", tmp_path / "a", download=download)
    shutil.move(tmp_path / "a", tmp_path / "b")  # the same claim at another modelCache.path

    def no_download(repo_id, revision):
        raise AssertionError("downloaded again")

    assert model_cache.cached_snapshot("acme/m", "main", tmp_path / "b", download=no_download) == \
        tmp_path / "b" / "huggingface" / "hub" / "snap"


def test_without_a_shared_cache_or_for_a_local_path_resolve_passes_the_name_on(tmp_path, monkeypatch):
    monkeypatch.delenv(model_cache.CACHE_VAR, raising=False)
    assert models.resolve(ModelSpec(name="Qwen/Qwen2.5-3B")) == "Qwen/Qwen2.5-3B"
    monkeypatch.setenv(model_cache.CACHE_VAR, str(tmp_path / "cache"))
    local = save_random_tiny(tmp_path / "in-the-image")
    assert models.resolve(ModelSpec(name=str(local))) == str(local)
    assert not (tmp_path / "cache").exists()


def test_a_cache_that_cannot_lock_files_still_serves_the_model(tmp_path, monkeypatch, caplog):
    """NFS without lockd answers a lock with ENOLCK: the download goes on without the lock (and
    says so), rather than failing the trainer."""
    import errno
    import fcntl

    def no_locks(fd, op, *args):
        if op != fcntl.LOCK_UN:
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(model_cache.fcntl, "lockf", no_locks)

    def works(repo_id, revision):
        (tmp_path / "snap").mkdir(exist_ok=True)
        return str(tmp_path / "snap")

    with caplog.at_level("WARNING"):
        assert model_cache.cached_snapshot("acme/m", "v1", tmp_path / "c", download=works) == tmp_path / "snap"
    assert "cannot lock files" in caplog.text
    assert model_cache.cached_snapshot("acme/m", "v1", tmp_path / "c", download=None) == tmp_path / "snap"  # the marker
