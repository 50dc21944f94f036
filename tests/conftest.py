"""Shared fixtures: the local Kubernetes control plane (started once per session) and manifests."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CRD_PATH = ROOT / "charts" / "zeroth" / "crds" / "reasoningruns.yaml"


def minimal_manifest(name: str = "minimal") -> dict:
    """The smallest valid ReasoningRun: everything else defaulted."""
    return {
        "apiVersion": "zeroth.dev/v1alpha1",
        "kind": "ReasoningRun",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "builtin:tiny-arith"},
            "dataset": {"source": "builtin:countdown"},
            "verifiers": [{"name": "countdown"}],
        },
    }


@pytest.fixture
def manifest() -> dict:
    return copy.deepcopy(minimal_manifest())


@dataclass
class Cluster:
    kubeconfig: Path
    bin: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": f"{self.bin}:{os.environ['PATH']}"}

    def run(self, tool: str, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.bin / tool), *args], input=stdin, capture_output=True, text=True,
                              env=self.env(), timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, stdin=stdin, check=check)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, obj: dict | list, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        docs = obj if isinstance(obj, list) else [obj]
        return self.kubectl("apply", *args, "-f", "-", stdin=yaml.safe_dump_all(docs), check=check)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The control plane of hack/cluster.py: reused when already up, else started (and stopped after)."""
    hack = ROOT / "hack" / "cluster.py"
    was_up = subprocess.run([sys.executable, str(hack), "up"], capture_output=True, text=True)
    if was_up.returncode != 0:
        pytest.fail(f"could not start the local control plane:\n{was_up.stderr}")
    env_lines = subprocess.run([sys.executable, str(hack), "env"], check=True, capture_output=True, text=True).stdout
    values = dict(line.removeprefix("export ").split("=", 1) for line in env_lines.splitlines())
    c = Cluster(kubeconfig=Path(values["KUBECONFIG"]), bin=Path(values["PATH"].split(":")[0]))
    yield c
    if "already up" not in was_up.stderr:
        subprocess.run([sys.executable, str(hack), "down"], check=False)


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Cluster:
    """The generated CRD installed and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/reasoningruns.zeroth.dev")
    return cluster


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    """A fresh namespace enforcing Pod Security "restricted", deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.apply({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    })
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
