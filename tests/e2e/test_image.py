"""Zeroth's image as `make image` built it (before the tests): its configuration is the
Dockerfile's, and run by a real container runtime (runc) the way the operator's pods run it — uid
1000, read-only root filesystem, no network, a tmpfs on /tmp — Zeroth and its engine import, the
built-in base model is baked in (found, not built), and Zeroth is installed as a package, not from
a checkout."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests import speed
from tests.conftest import ROOT, hack_module
from zeroth import __version__, api
from zeroth.operator import builders

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="make image and runc need root")

CACHE = Path(os.environ.get("ZEROTH_CACHE") or Path.home() / ".cache" / "zeroth")
UMOCI = sorted((CACHE / "image" / "tools").glob("umoci-*"))


def run(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=speed.scaled(timeout), **kw)


@pytest.fixture(scope="module")
def archive() -> Path:
    """The archive `make image` wrote (a no-op here when the image is up to date)."""
    out = run("make", "-s", "image", cwd=ROOT, timeout=1800).stdout.strip().splitlines()
    return Path(out[-1])


def oci_archive(archive: Path) -> tuple[dict, dict, dict]:
    """(index, manifest, config) of the one image in an OCI archive, read in place."""
    with tarfile.open(archive) as tar:
        def read(name: str) -> dict:
            return json.load(tar.extractfile(name))

        index = read("index.json")
        (entry,) = index["manifests"]
        manifest = read("blobs/" + entry["digest"].replace(":", "/"))
        return index, manifest, read("blobs/" + manifest["config"]["digest"].replace(":", "/"))


def test_configuration_is_the_dockerfiles(archive):
    dc = hack_module("image/dockerfile_config.py")
    want = dc.config((ROOT / "Dockerfile").read_text())
    index, manifest, image = oci_archive(archive)
    cfg = image["config"]
    assert cfg["Env"] == want["env"]
    assert (cfg["User"], cfg["WorkingDir"]) == (want["user"], want["workingdir"])
    assert (cfg["Entrypoint"], cfg["Cmd"]) == (want["entrypoint"], want["cmd"])
    assert cfg["Labels"]["org.opencontainers.image.version"] == __version__
    # the Dockerfile's four steps, one layer each
    assert [h["created_by"] for h in image["history"]] == [
        "hack/image/setup.sh base", "hack/image/setup.sh deps cpu", "hack/image/setup.sh app", "hack/image/setup.sh model"]
    assert len(image["rootfs"]["diff_ids"]) == 4
    # named as the API's default image, so a pod that names none runs it
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == api.DEFAULT_IMAGE
    assert len(manifest["layers"]) == 4


PROBE = """
import importlib.metadata as md, json, os, sys, time
t = time.monotonic()
import deepspeed, ray, torch, transformers
import zeroth
from zeroth import api
from zeroth.trainer import models
built = []
path = models.resolve(api.ModelSpec(name="builtin:tiny-arith"), building=lambda: built.append(1))
model = transformers.AutoModelForCausalLM.from_pretrained(path)
try:
    open("/opt/zeroth/written", "w")
    writable = True
except OSError:
    writable = False
direct = md.distribution("zeroth").read_text("direct_url.json")
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "version": zeroth.__version__, "file": zeroth.__file__,
                  "editable": bool(direct and json.loads(direct).get("dir_info", {}).get("editable")),
                  "model": path, "built": bool(built), "params": sum(p.numel() for p in model.parameters()),
                  "root_writable": writable, "tmp_writable": os.access("/tmp", os.W_OK),
                  "interfaces": sorted(os.listdir("/sys/class/net")), "seconds": round(time.monotonic() - t, 1)}))
"""


@pytest.fixture(scope="module")
def bundle(archive, tmp_path_factory) -> Path:
    """The image unpacked into an OCI runtime bundle (umoci), from the layout the archive was
    copied from (the same manifest: checked)."""
    assert UMOCI, "umoci is missing: make image builds it"
    layout, tag = CACHE / "image" / "oci", archive.name.removeprefix("zeroth-").removesuffix(".oci.tar")
    digest = oci_archive(archive)[0]["manifests"][0]["digest"]
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
            for m in json.loads((layout / "index.json").read_text())["manifests"]}
    assert tags[tag] == digest
    out = tmp_path_factory.mktemp("image") / "bundle"
    run(str(UMOCI[-1]), "unpack", "--image", f"{layout}:{tag}", str(out), timeout=600)
    return out


def runc(bundle: Path, args: list[str] | None = None) -> subprocess.CompletedProcess:
    """Runs the image's process (or `args` after its entrypoint) with the pods' restrictions."""
    config = json.loads((bundle / "config.json").read_text())
    process = config["process"]
    process["terminal"] = False
    if args is not None:
        process["args"] = process["args"][:2] + args  # keep the entrypoint (tini --)
    process["noNewPrivileges"] = True
    process["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    config["root"]["readonly"] = True
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]})
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"zeroth-test-{uuid.uuid4().hex[:8]}"
    try:
        return subprocess.run(["runc", "run", "--bundle", str(bundle), name], capture_output=True, text=True,
                              timeout=speed.scaled(300))
    finally:
        subprocess.run(["runc", "delete", "--force", name], capture_output=True)


def test_default_command(bundle):
    proc = runc(bundle)
    assert proc.returncode == 0, proc.stderr
    assert "zeroth" in proc.stdout and "run" in proc.stdout  # `zeroth --help` lists its commands


def test_runs_as_the_pods_run_it(bundle):
    proc = runc(bundle, ["python", "-c", PROBE])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (probe["uid"], probe["gid"]) == (builders.UID, builders.UID)
    assert probe["version"] == __version__
    assert probe["file"].startswith("/opt/zeroth/venv/lib/") and not probe["editable"]
    assert probe["model"].startswith("/opt/zeroth/cache/models/tiny-arith-") and not probe["built"]
    assert probe["params"] > 0
    assert not probe["root_writable"] and probe["tmp_writable"]
    assert probe["interfaces"] == ["lo"]  # no network but loopback
    print(f"imports and model load in the container: {probe['seconds']} s")
