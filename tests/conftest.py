"""Shared fixtures: the local Kubernetes control plane (started once per session) and manifests."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests import procs, speed

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def hack_module(path: str):
    """A script under hack/ (standard library only, not a package), imported by its path: `cluster.py`."""
    spec = importlib.util.spec_from_file_location("zeroth_hack_" + path.removesuffix(".py").replace("/", "_"), ROOT / "hack" / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
CRD_PATH = ROOT / "charts" / "zeroth" / "crds" / "reasoningruns.yaml"


# ------------------------------------------------------------- processes and time limits


_SESSION = pytest.StashKey[str]()
_SPEED = pytest.StashKey[tuple]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SESSION] = procs.start_session()
    config.stash[_SPEED] = speed.measure()


def pytest_report_header(config: pytest.Config) -> str:
    value, source = config.stash[_SPEED]
    return f"machine speed factor {value:.2f} ({source}): every time limit is scaled by it"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test's pytest-timeout limit (its marker, or the ini default) times the speed factor."""
    default = float(config.getini("timeout") or 0)
    for item in items:
        mark = item.get_closest_marker("timeout")
        if mark is None:
            base = default
        else:
            base = float(mark.args[0] if mark.args else mark.kwargs.get("timeout", default))
        if base:
            item.add_marker(pytest.mark.timeout(speed.scaled(base)), append=False)


@pytest.fixture(scope="session", autouse=True)
def _session_processes():
    with procs.owned("session"):
        yield


@pytest.fixture(scope="module", autouse=True)
def _module_processes(request: pytest.FixtureRequest):
    with procs.owned(request.module.__name__.rsplit(".", 1)[-1]):
        yield


@pytest.fixture(autouse=True)
def _test_processes(request: pytest.FixtureRequest):
    with procs.owned(request.node.name[:40], test=True):
        yield


@pytest.hookimpl(trylast=True)  # after pytest's own sessionfinish has torn every fixture down
def pytest_sessionfinish(session: pytest.Session) -> None:
    left = procs.leftovers(session.config.stash[_SESSION])
    if not left:
        return
    procs.kill_all(lambda: procs.leftovers(session.config.stash[_SESSION], grace=0))
    lines = "\n".join(f"  {p.describe()}" for p in left)
    message = f"PROCESSES LEFT BEHIND: {len(left)} process(es) the tests started were still alive at the end (now killed):\n{lines}"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("!", "processes left behind", red=True, bold=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
                              env=self.env(), timeout=speed.scaled(120))
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
    cluster.kubectl("wait", "--for=condition=Established", f"--timeout={speed.scaled(60):.0f}s", "crd/reasoningruns.zeroth.dev")
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


# --------------------------------------------------------------------------------- the operator

OPERATOR_RELEASE = "zeroth"


@dataclass
class Operator:
    """The operator as a process (`kopf run`, the chart's command), authenticated as the chart's
    ServiceAccount: the RBAC that `helm install` grants is all it has."""

    cluster: Cluster
    kubeconfig: Path
    log: Path
    metrics_port: int
    health_port: int
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # settings of its own (ZEROTH_RESYNC_SECONDS, ...)
    namespaces: tuple[str, ...] = ()  # namespace-scoped, as the chart's watchNamespaces runs it; () = all

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "ZEROTH_OPERATOR_METRICS_PORT": str(self.metrics_port),
               "ZEROTH_WATCH_NAMESPACES": ",".join(self.namespaces), **self.env}
        kopf = Path(sys.executable).parent / "kopf"
        scope = [a for ns in self.namespaces for a in ("--namespace", ns)] or ["--all-namespaces"]
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(kopf), "run", "--standalone", *scope, f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
             "-m", "zeroth.operator.handlers"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + speed.scaled(60)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the operator did not become healthy:\n{self.log.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def counter(self, name: str) -> float:
        """The operator's counter `name` (zeroth/metrics.py's name), summed over its labels; 0 when unset."""
        from prometheus_client.parser import text_string_to_metric_families

        from zeroth import metrics

        full = metrics.BY_NAME[name].full_name
        return sum(s.value for f in text_string_to_metric_families(self.metrics()) for s in f.samples
                   if s.name == f"{full}_total")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_chart(cluster: Cluster, namespace: str, release: str = OPERATOR_RELEASE, *args: str) -> list[dict]:
    """`helm install` the chart (the CRD is installed by the `crd` fixture) and returns its objects."""
    cluster.run("helm", "install", release, str(ROOT / "charts" / "zeroth"), "--namespace", namespace,
                "--skip-crds", "--wait=false", *args)
    manifest = cluster.run("helm", "get", "manifest", release, "--namespace", namespace).stdout
    return [d for d in yaml.safe_load_all(manifest) if d]


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, dest: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount, with a token from the TokenRequest API."""
    token = cluster.kubectl("create", "token", account, "--namespace", namespace, "--duration=3h").stdout.strip()
    admin = json.loads(cluster.kubeconfig.read_text())
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": account}}],
        "current-context": "local",
    }
    dest.write_text(json.dumps(kubeconfig))
    return dest


@pytest.fixture(scope="module")
def operator(crd: Cluster, tmp_path_factory) -> Operator:
    """The chart installed in a namespace of its own and the operator running as its ServiceAccount;
    stopped, and the release uninstalled, after the module."""
    ns = f"zeroth-system-{uuid.uuid4().hex[:6]}"
    crd.apply({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    release = f"zeroth-{ns[-6:]}"
    objects = install_chart(crd, ns, release, "--set", "replicaCount=0")  # the operator runs here, not in kwok
    account = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
    tmp = tmp_path_factory.mktemp("operator")
    op = Operator(crd, service_account_kubeconfig(crd, ns, account, tmp / "kubeconfig"), tmp / "operator.log",
                  _free_port(), _free_port())
    op.start()
    yield op
    op.stop()
    crd.run("helm", "uninstall", release, "--namespace", ns, check=False)
    crd.kubectl("delete", "namespace", ns, "--wait=false", check=False)
