"""One source of truth for the image's name and tag, and one recipe for its configuration.

`zeroth.__version__` is the version; the package's metadata, the API's default images, `make
image-name` and the chart's appVersion must all say it. The Dockerfile's last stage is the image's
configuration; `make image` reads it from there (hack/image/dockerfile_config.py)."""

from __future__ import annotations

import importlib.metadata
import subprocess

import yaml

import zeroth
from tests import speed
from tests.conftest import ROOT, hack_module
from zeroth import api
from zeroth.operator import builders

CHART = ROOT / "charts" / "zeroth"


def _dockerfile_config():
    return hack_module("image/dockerfile_config.py")


def test_one_version():
    version = zeroth.__version__
    assert importlib.metadata.version("zeroth") == version  # pyproject reads it
    assert api.DEFAULT_IMAGE == f"{api.IMAGE_REPOSITORY}:{version}"
    assert api.CUDA_IMAGE == f"{api.IMAGE_REPOSITORY}:{version}-cuda"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == version, "charts/zeroth/Chart.yaml appVersion must be zeroth.__version__"
    assert values["image"]["repository"] == api.IMAGE_REPOSITORY
    assert values["image"]["tag"] == ""  # the operator's image is the chart's appVersion


def test_make_builds_the_api_image():
    def name(flavour: str) -> str:
        return subprocess.run(["make", "-s", "image-name", f"FLAVOUR={flavour}"], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=speed.scaled(120)).stdout.strip()

    assert name("cpu") == api.DEFAULT_IMAGE
    assert name("cuda") == api.CUDA_IMAGE


def test_dockerfile_configuration():
    dc = _dockerfile_config()
    cfg = dc.config((ROOT / "Dockerfile").read_text())
    # the user the pods run as (runAsUser, fsGroup) is the image's own
    assert cfg["user"] == f"{builders.UID}:{builders.UID}"
    env = dict(e.split("=", 1) for e in cfg["env"])
    assert env["PATH"].startswith("/opt/zeroth/venv/bin:")
    assert env["HOME"] == builders.HOME  # the pods set HOME to the same writable place
    assert cfg["entrypoint"] == ["/usr/bin/tini", "--"] and cfg["cmd"] == ["zeroth", "--help"]
    assert cfg["workingdir"] == "/tmp"
    args = dc.umoci_args(cfg)
    assert {"--config.user=1000:1000", "--config.workingdir=/tmp", "--config.env=HOME=/tmp"} <= set(args)
    assert [a for a in args if a.startswith("--config.entrypoint=")] == ["--config.entrypoint=/usr/bin/tini",
                                                                        "--config.entrypoint=--"]


def test_dockerfile_config_reads_the_last_stage_only():
    dc = _dockerfile_config()
    text = 'FROM a AS b\nENV X=1\nUSER 5\nFROM c\nENV Y=2 \\\n\nUSER 7\nCMD ["a", "b"]\n'
    assert dc.config(text) == {"env": ["Y=2"], "user": "7", "cmd": ["a", "b"]}
    for bad in ("FROM c\nENV A=1 B=2\n", "FROM c\nCMD echo hi\n"):
        try:
            dc.config(bad)
        except SystemExit as e:
            assert "dockerfile_config" in str(e)
        else:
            raise AssertionError(f"accepted {bad!r}")
