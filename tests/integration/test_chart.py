"""The Helm chart against the real API server: lint, render, the values schema, an install under Pod
Security "restricted", the operator's RBAC (what it may do and what it may not), uninstall."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import CRD_PATH, ROOT, Cluster, minimal_manifest, service_account_kubeconfig
from tests.speed import scaled
from zeroth import alerts, api, validation
from zeroth.operator import builders, handlers

pytestmark = pytest.mark.cluster

CHART = ROOT / "charts" / "zeroth"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))  # zeroth/dashboards.py writes them
# `helm template` assumes Kubernetes 1.20 offline, older than the chart's kubeVersion allows
KUBE_VERSION = "1.31.0"
COMMAND = ["kopf", "run", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz",
           "-m", "zeroth.operator.handlers"]


def render(cluster: Cluster, *args: str, namespace: str = "zeroth-system") -> list[dict]:
    out = cluster.run("helm", "template", "zeroth", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


# ---------------------------------------------------------------------------------- offline


def test_helm_lint_passes(cluster: Cluster):
    out = cluster.run("helm", "lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


def test_template_renders_the_operator(cluster: Cluster):
    docs = render(cluster)
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", *["ConfigMap"] * len(DASHBOARDS),
                                               "Deployment", "Service", "ServiceAccount"]
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    (c,) = pod["containers"]
    assert c["image"] == f"ghcr.io/zeroth-dev/zeroth:{APP_VERSION}"
    assert c["command"] == COMMAND
    assert {e["name"]: e["value"] for e in c["env"]}["ZEROTH_OPERATOR_METRICS_PORT"] == "8000"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8000, "health": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["resources"] == yaml.safe_load((CHART / "values.yaml").read_text())["resources"]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    # the Service reaches the operator's pod, and only that pod
    service = one(docs, "Service")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}]


def test_values_reach_the_pod(cluster: Cluster, tmp_path: Path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"tag": "v9.9.9", "pullPolicy": "Always"},
        "podSecurityContext": {"runAsUser": 2000},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}},
    }))
    pod = one(render(cluster, "-f", str(values)), "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert (c["image"], c["imagePullPolicy"]) == ("ghcr.io/zeroth-dev/zeroth:v9.9.9", "Always")
    assert pod["securityContext"]["runAsUser"] == 2000
    assert pod["securityContext"]["runAsNonRoot"] is True  # an override keeps the other defaults
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["affinity"]["nodeAffinity"]
    assert c["resources"]["requests"]["cpu"] == "250m" and c["resources"]["limits"]["memory"] == "1Gi"


def test_the_gpu_node_selector_reaches_the_operator_as_json_or_not_at_all(cluster: Cluster):
    def env(*args: str) -> dict[str, str]:
        (c,) = one(render(cluster, *args), "Deployment")["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"]}
    assert "ZEROTH_GPU_NODE_SELECTOR" not in env()  # unset: the operator's built-in NVIDIA default
    gke = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert json.loads(env("--set-json", f"gpuNodeSelector={json.dumps(gke)}")["ZEROTH_GPU_NODE_SELECTOR"]) == gke
    assert env("--set-json", "gpuNodeSelector={}")["ZEROTH_GPU_NODE_SELECTOR"] == "{}"  # none


def test_pod_monitor_only_where_the_api_is_served(cluster: Cluster):
    assert not [d for d in render(cluster) if d["kind"] == "PodMonitor"]
    served = ("--api-versions", "monitoring.coreos.com/v1/PodMonitor")
    docs = render(cluster, *served, "--set", "metrics.podMonitor.labels.release=prometheus")
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    # honorLabels: the operator's run metrics carry the run's namespace, which must not become the operator's
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s",
                                                        "honorLabels": True}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # the operator puts the same labels on each run's PodMonitor, or the cluster's Prometheus skips the runs
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert json.loads(env["ZEROTH_POD_MONITOR_LABELS"]) == {"release": "prometheus"}
    (c,) = one(render(cluster, *served), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "ZEROTH_POD_MONITOR_LABELS" not in {e["name"] for e in c["env"]}
    assert not [d for d in render(cluster, *served, "--set", "metrics.podMonitor.enabled=false") if d["kind"] == "PodMonitor"]


def config_maps(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "ConfigMap"]


def test_dashboards_ship_as_config_maps_for_grafanas_sidecar(cluster: Cluster):
    maps = config_maps(render(cluster))
    assert len(maps) == len(DASHBOARDS) == 4
    assert len({m["metadata"]["name"] for m in maps}) == len(maps)
    shipped = {}
    for m in maps:
        assert m["metadata"]["namespace"] == "zeroth-system"
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert "annotations" not in m["metadata"]
        ((file, text),) = m["data"].items()
        shipped[file] = text
    assert shipped == {p.name: p.read_text() for p in DASHBOARDS}
    assert all(json.loads(text)["uid"].startswith("zeroth-") for text in shipped.values())


def test_dashboards_label_annotations_namespace_and_off(cluster: Cluster):
    maps = config_maps(render(cluster, "--set", "dashboards.label=grafana.example.com/dashboard",
                              "--set-string", "dashboards.labelValue=zeroth", "--set", "dashboards.labels.team=ml",
                              "--set", "dashboards.annotations.grafana_folder=Zeroth", "--set", "dashboards.namespace=monitoring"))
    assert len(maps) == len(DASHBOARDS)
    for m in maps:
        labels = m["metadata"]["labels"]
        assert (labels["grafana.example.com/dashboard"], labels["team"]) == ("zeroth", "ml")
        assert "grafana_dashboard" not in labels
        assert m["metadata"]["annotations"] == {"grafana_folder": "Zeroth"}
        assert m["metadata"]["namespace"] == "monitoring"
    assert not config_maps(render(cluster, "--set", "dashboards.enabled=false"))


def test_chart_ships_the_crd_file(cluster: Cluster):
    crds = [d for d in render(cluster, "--include-crds") if d["kind"] == "CustomResourceDefinition"]
    assert crds == [yaml.safe_load(CRD_PATH.read_text())]


def test_names_yaml_would_read_as_booleans_stay_strings(cluster: Cluster):
    """A release named `on` in namespace `off`, watching `yes` and `no`: YAML 1.1 reads each bare
    word as a boolean, and the API server refuses a boolean label or namespace."""
    out = cluster.run("helm", "template", "on", str(CHART), "-n", "off", "--kube-version", KUBE_VERSION,
                      "--set", "watchNamespaces={yes,no}", "--api-versions", "monitoring.coreos.com/v1/PrometheusRule").stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "Role", "ConfigMap", "PrometheusRule"}
    for d in docs:
        meta = d["metadata"]
        assert all(isinstance(v, str) for v in meta.get("labels", {}).values()), (d["kind"], meta)
        assert isinstance(meta.get("namespace", ""), str), (d["kind"], meta)
        assert all(isinstance(s.get("namespace", ""), str) for s in d.get("subjects", [])), d
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {"yes", "no"}


def test_cluster_scoped_names_differ_per_namespace(cluster: Cluster):
    names = {ns: {d["metadata"]["name"] for d in render(cluster, namespace=ns) if d["kind"].startswith("Cluster")}
             for ns in ("team-a", "team-b")}
    assert len(names["team-a"]) == 1 and names["team-a"] != names["team-b"]


@pytest.mark.parametrize(("setting", "path"), [
    ("replicaCount=two", "/replicaCount"),
    ("replicaCount=2", "/replicaCount"),  # two standalone kopf operators would both reconcile every run
    ("image.tag=3", "/image/tag"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("resources.limits.memory=lots", "/resources/limits/memory"),
    ("metrics.podMonitor.interval=often", "/metrics/podMonitor/interval"),
    ("imageTag=v1", "imageTag"),
    ("gpuNodeSelector=nvidia", "/gpuNodeSelector"),
    ("watchNamespaces={team-a,Team_B}", "/watchNamespaces/1"),  # not a namespace name
    ("watchNamespaces={team-a,team-a}", "/watchNamespaces"),
    ("watchNamespaces=team-a", "/watchNamespaces"),  # a list, not a string
    ("dashboards.enabled=maybe", "/dashboards/enabled"),
    ("dashboards.labelValue=1", "/dashboards/labelValue"),  # a string: the sidecar matches label text
    ("dashboards.label=grafana dashboard", "/dashboards/label"),  # not a label key
    ("dashboards.namespace=Monitoring", "/dashboards/namespace"),
    ("dashboards.folder=Zeroth", "/dashboards"),  # the folder is an annotation of the sidecar's choice
    ("alerts.noProgressMinutes=soon", "/alerts/noProgressMinutes"),
    ("alerts.pendingMinutes=0", "/alerts/pendingMinutes"),
    ("alerts.pendingMinutes=0.5", "/alerts/pendingMinutes"),  # whole minutes: a PromQL duration
    ("alerts.rewardCollapseFraction=2", "/alerts/rewardCollapseFraction"),
    ("alerts.rewardCollapseFraction=1.5", "/alerts/rewardCollapseFraction"),  # --set passes decimals as strings
    ("alerts.verifierErrorFraction=0", "/alerts/verifierErrorFraction"),
    ("alerts.logprobMismatchMax=high", "/alerts/logprobMismatchMax"),
    ("alerts.labels.release=1", "/alerts/labels/release"),  # a label's value is a string
    ("alerts.noProgressMinute=5", "noProgressMinute"),
])
def test_values_schema_refuses_naming_the_value(cluster: Cluster, setting: str, path: str):
    proc = cluster.run("helm", "template", "zeroth", str(CHART), "--kube-version", KUBE_VERSION, "--set", setting, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert path in proc.stderr, proc.stderr


# ------------------------------------------------------------------------ installed, for real


@dataclass
class Release:
    name: str
    namespace: str
    manifest: list[dict]  # what helm installed (crds/ aside)
    stderr: str  # helm's warnings, the API server's among them

    def name_of(self, kind: str) -> str:
        return one(self.manifest, kind)["metadata"]["name"]

    @property
    def service_account(self) -> str:
        return self.name_of("ServiceAccount")

    @property
    def cluster_role(self) -> str:
        return self.name_of("ClusterRole")

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def restricted_namespace(cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    return name


def install(cluster: Cluster, name: str, namespace: str, *args: str) -> Release:
    stderr = cluster.run("helm", "install", name, str(CHART), "-n", namespace, *args).stderr
    docs = [d for d in yaml.safe_load_all(cluster.run("helm", "get", "manifest", name, "-n", namespace).stdout) if d]
    return Release(name, namespace, docs, stderr)


@pytest.fixture(scope="module")
def release(cluster: Cluster):
    """The chart installed into a fresh restricted namespace, its operator pod Running (kwok)."""
    ns = restricted_namespace(cluster, "zeroth-system")
    try:
        yield install(cluster, "zeroth", ns, "--wait", "--timeout", f"{scaled(90):.0f}s")
    finally:
        cluster.run("helm", "uninstall", "zeroth", "-n", ns, "--wait", "--timeout", f"{scaled(60):.0f}s", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_install_runs_the_operator_under_restricted(cluster: Cluster, release: Release):
    assert cluster.get(f"namespace/{release.namespace}")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "PodSecurity" not in release.stderr  # warn=restricted: the Deployment's template passes too
    deploy = cluster.get("deployment", "-n", release.namespace)["items"][0]
    assert deploy["status"].get("availableReplicas") == 1
    selector = ",".join(f"{k}={v}" for k, v in deploy["spec"]["selector"]["matchLabels"].items())
    (pod,) = cluster.get("pods", "-n", release.namespace, "-l", selector)["items"]
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == release.service_account
    assert pod["spec"]["containers"][0]["command"] == COMMAND


def test_install_leaves_the_crd_served(cluster: Cluster, release: Release):
    # helm installs crds/ only where the CRD is absent; either way it must be the shipped file
    crd = cluster.get("crd/reasoningruns.zeroth.dev")
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    shipped = yaml.safe_load(CRD_PATH.read_text())
    assert crd["spec"]["versions"][0]["schema"] == shipped["spec"]["versions"][0]["schema"]


def test_install_refuses_a_bad_value(cluster: Cluster, release: Release):
    proc = cluster.run("helm", "install", "bad", str(CHART), "-n", release.namespace, "--set", "replicaCount=two", check=False)
    assert proc.returncode != 0 and "/replicaCount" in proc.stderr, proc.stderr
    assert cluster.run("helm", "status", "bad", "-n", release.namespace, check=False).returncode != 0


def kubectl_ref(obj: dict) -> str:
    """`Kind.group/name`, as kubectl takes it."""
    group = obj["apiVersion"].rpartition("/")[0]
    return f"{obj['kind']}{'.' + group if group else ''}/{obj['metadata']['name']}"


def test_uninstall_removes_what_it_installed(cluster: Cluster):
    ns = restricted_namespace(cluster, "zeroth-system")
    try:
        rel = install(cluster, "gone", ns)
        objects = [kubectl_ref(d) for d in rel.manifest]
        assert len(objects) == 5 + len(DASHBOARDS)
        cluster.kubectl("get", "-n", ns, *objects)
        cluster.run("helm", "uninstall", "gone", "-n", ns, "--wait", "--timeout", f"{scaled(60):.0f}s")
        for obj in objects:
            assert "NotFound" in cluster.kubectl("get", "-n", ns, obj, check=False).stderr, obj
        cluster.get("crd/reasoningruns.zeroth.dev")  # Helm never deletes what crds/ installed
    finally:
        cluster.run("helm", "uninstall", "gone", "-n", ns, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_install_creates_the_dashboards_and_the_prometheus_rule_when_enabled_and_neither_when_not(cluster: Cluster):
    """With the Prometheus Operator's PrometheusRule CRD (its Go module's) served, `helm install`
    creates one dashboard ConfigMap per shipped file, labelled for Grafana's sidecar, and the
    PrometheusRule with the values filled in; with both switched off, neither."""
    crd = subprocess.run([str(ROOT / "hack" / "monitoring-crds.sh"), "prometheusrules"], check=True, capture_output=True,
                         text=True).stdout.strip()
    cluster.kubectl("apply", "--server-side", "-f", crd)
    ns = restricted_namespace(cluster, "zeroth-system")
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"--timeout={scaled(60):.0f}s",
                        "crd/prometheusrules.monitoring.coreos.com")
        install(cluster, "on", ns, "--set", "replicaCount=0", "--set", "alerts.noProgressMinutes=25")
        maps = cluster.get("configmaps", "-n", ns, "-l", "grafana_dashboard=1,app.kubernetes.io/instance=on")["items"]
        assert sorted(key for m in maps for key in m["data"]) == [p.name for p in DASHBOARDS]
        for m in maps:
            ((file, text),) = m["data"].items()
            assert text == (CHART / "dashboards" / file).read_text()  # whole, trailing newline and all
        (rule,) = cluster.get("prometheusrules", "-n", ns, "-l", "app.kubernetes.io/instance=on")["items"]
        rules = rule["spec"]["groups"][0]["rules"]
        assert [r["alert"] for r in rules] == [a.name for a in alerts.alerts()]
        (stuck,) = [r for r in rules if r["alert"] == "ZerothRunNoProgress"]
        assert "[25m]" in stuck["expr"] and "{{ .Values" not in json.dumps(rules)

        install(cluster, "off", ns, "--set", "replicaCount=0", "--set", "dashboards.enabled=false",
                "--set", "alerts.enabled=false")
        off = "app.kubernetes.io/instance=off"
        assert cluster.get("configmaps", "-n", ns, "-l", off)["items"] == []
        assert cluster.get("prometheusrules", "-n", ns, "-l", off)["items"] == []
    finally:
        for release in ("on", "off"):
            cluster.run("helm", "uninstall", release, "-n", ns, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        # gone before the next install asks the API server what it serves
        cluster.kubectl("delete", "crd", "prometheusrules.monitoring.coreos.com", f"--timeout={scaled(60):.0f}s",
                        check=False)


# ----------------------------------------------------------------------------------- RBAC

# "verb resource[.group][/subresource] namespace" ("-" = every namespace, or cluster-scoped)
ALLOWED = [
    "list reasoningruns.zeroth.dev -", "watch reasoningruns.zeroth.dev -", "get reasoningruns.zeroth.dev team-a",
    "get reasoningruns.zeroth.dev/status team-a", "patch reasoningruns.zeroth.dev/status team-a",
    "update reasoningruns.zeroth.dev/finalizers team-a",
    "delete reasoningruns.zeroth.dev team-a",  # spec.ttlSecondsAfterFinished
    "create pods -", "list pods -", "watch pods -", "patch pods team-a", "delete pods team-a",
    "get configmaps team-a", "create configmaps team-a", "create secrets team-a", "create serviceaccounts team-a",
    "create services team-a", "create roles.rbac.authorization.k8s.io team-a",
    "create rolebindings.rbac.authorization.k8s.io team-a", "create networkpolicies.networking.k8s.io team-a",
    "create podmonitors.monitoring.coreos.com team-a", "create events team-a",
    "list customresourcedefinitions.apiextensions.k8s.io -", "watch customresourcedefinitions.apiextensions.k8s.io -",
]
DENIED = [
    # nodes and cluster-wide RBAC
    "get nodes -", "delete nodes -", "get nodes/proxy -", "create clusterroles.rbac.authorization.k8s.io -",
    "create clusterrolebindings.rbac.authorization.k8s.io -", "escalate roles.rbac.authorization.k8s.io team-a",
    "bind roles.rbac.authorization.k8s.io team-a", "bind clusterroles.rbac.authorization.k8s.io -",
    "patch roles.rbac.authorization.k8s.io team-a",
    # Secrets: create only
    "get secrets kube-system", "get secrets team-a", "list secrets -", "watch secrets -", "patch secrets team-a",
    "delete secrets team-a",
    # other identities
    "create serviceaccounts/token team-a", "impersonate users -", "impersonate groups -",
    "impersonate serviceaccounts team-a",
    # into pods
    "create pods/exec team-a", "get pods/log team-a", "create pods/portforward team-a",
    "update pods/status team-a", "create pods/eviction team-a",
    # the runs belong to their users
    "create reasoningruns.zeroth.dev team-a",
    "update reasoningruns.zeroth.dev team-a", "patch reasoningruns.zeroth.dev team-a",
    "update reasoningruns.zeroth.dev/status team-a",
    # workloads, namespaces, cluster extension points
    "create deployments.apps team-a", "create jobs.batch team-a", "list namespaces -", "delete namespaces -",
    "update customresourcedefinitions.apiextensions.k8s.io -", "delete customresourcedefinitions.apiextensions.k8s.io -",
    "create mutatingwebhookconfigurations.admissionregistration.k8s.io -",
    "list configmaps -", "patch configmaps team-a", "delete services team-a", "patch networkpolicies.networking.k8s.io team-a",
]


def access_review(user: str, row: str) -> dict:
    """A SubjectAccessReview for the operator's ServiceAccount, groups as its token carries them.
    (`kubectl auth can-i` sends a resource the server does not serve, like podmonitors here, without
    its group, so it cannot ask about them.)"""
    verb, target, ns = row.split()
    resource, _, subresource = target.partition("/")
    resource, _, group = resource.partition(".")
    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": subresource}
    if ns != "-":
        attributes["namespace"] = ns
    namespace = user.split(":")[2]
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                     "resourceAttributes": attributes}}


def access_of(cluster: Cluster, user: str, rows: list[str]) -> dict[str, bool]:
    """The API server's answer to each row's SubjectAccessReview for `user`."""
    out = cluster.kubectl("create", "-o", "json", "-f", "-",
                          stdin=yaml.safe_dump_all([access_review(user, r) for r in rows])).stdout
    decoder, reviews, at = json.JSONDecoder(), [], 0
    while out[at:].strip():  # one JSON document per review, back to back
        review, at = decoder.raw_decode(out, at + len(out[at:]) - len(out[at:].lstrip()))
        reviews.append(review)
    return {row: r["status"].get("allowed", False) for row, r in zip(rows, reviews, strict=True)}


@pytest.fixture(scope="module")
def access(cluster: Cluster, release: Release) -> dict[str, bool]:
    return access_of(cluster, release.user, ALLOWED + DENIED)


@pytest.mark.parametrize("row", ALLOWED)
def test_operator_may(access: dict[str, bool], row: str):
    assert access[row], f"the operator's ServiceAccount cannot {row}"


@pytest.mark.parametrize("row", DENIED)
def test_operator_may_not(access: dict[str, bool], row: str):
    assert not access[row], f"the operator's ServiceAccount can {row}"


def test_cluster_role_has_no_wildcards_and_nothing_on_nodes(cluster: Cluster, release: Release):
    rules = cluster.get(f"clusterrole/{release.cluster_role}")["rules"]
    for rule in rules:
        for key in ("verbs", "resources", "apiGroups"):
            assert "*" not in rule.get(key, []), rule
        assert not {"nodes", "nodes/proxy"} & set(rule["resources"]), rule
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
    assert [r["verbs"] for r in rules if "secrets" in r["resources"]] == [["create"]]


def test_the_handlers_calls_succeed_with_the_service_accounts_token(crd: Cluster, release: Release, namespace: str, tmp_path: Path):
    """What operator/handlers.py does for a run, done with the operator's own token: every child
    created (AlreadyExists the second time), the config read, pods listed, annotated and deleted, the status
    patched, an Event posted; and what it must not do refused, RBAC's escalation check included."""
    crd.apply(minimal_manifest("rbac"), "-n", namespace)
    body = crd.get("rr/rbac", "-n", namespace)
    run = validation.validate({k: v for k, v in body.items() if k != "status"})
    kubeconfig = str(service_account_kubeconfig(crd, release.namespace, release.service_account, tmp_path / "operator.kubeconfig"))

    def as_operator(*args: str, stdin: str | None = None, check: bool = True):
        return crd.kubectl("--kubeconfig", kubeconfig, *args, stdin=stdin, check=check)

    assert release.user in as_operator("auth", "whoami").stdout
    children = builders.children(run, body["metadata"]["uid"], token="t0ken", attempt=0, pod_monitor=False)
    for obj in children:
        as_operator("create", "-f", "-", stdin=json.dumps(obj))
    for obj in children:  # create-if-missing: a second create answers AlreadyExists, not Forbidden
        again = as_operator("create", "-f", "-", stdin=json.dumps(obj), check=False)
        assert "AlreadyExists" in again.stderr or "already exists" in again.stderr, again.stderr
    as_operator("get", "rr/rbac", "-n", namespace)
    as_operator("get", "rr", "-A")
    as_operator("get", "configmap/rbac-config", "-n", namespace)
    for obj in children:  # the owner of a child found existing is read (all but the Secret)
        if obj["kind"] not in ("Secret", "Pod", "ConfigMap"):
            as_operator("get", "-f", "-", "-o", "name", stdin=json.dumps(obj))
    pods = as_operator("get", "pods", "-A", "-l", f"{builders.LABEL_RUN}=rbac", "-o", "name").stdout.split()
    assert len(pods) == len([c for c in children if c["kind"] == "Pod"])
    as_operator("patch", "rr/rbac", "-n", namespace, "--subresource=status", "--type=merge", "-p", '{"status": {"phase": "Pending"}}')
    as_operator("create", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "rbac.", "namespace": namespace},
        "involvedObject": {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "ReasoningRun", "name": "rbac",
                           "namespace": namespace, "uid": body["metadata"]["uid"]},
        "type": "Normal", "reason": "Pending", "message": "created", "source": {"component": "zeroth-operator"}}))
    as_operator("patch", pods[0], "-n", namespace, "--type=merge", "-p", json.dumps(builders.end_kueue_group()))
    as_operator("delete", pods[0], "-n", namespace, "--wait=false")

    refused = [
        ("get", f"secret/{builders.token_secret_name('rbac', body['metadata']['uid'])}", "-n", namespace),
        ("get", "nodes"),
        ("create", "role", "wider", "-n", namespace, "--verb=get", "--resource=secrets"),
        ("create", "rolebinding", "admin", "-n", namespace, "--clusterrole=admin", f"--serviceaccount={namespace}:rbac"),
        ("create", "token", "default", "-n", namespace),
        ("patch", "rr/rbac", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}'),
    ]
    for args in refused:
        proc = as_operator(*args, check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (args, proc.stderr)
    escalation = as_operator(*refused[2], check=False).stderr
    assert "attempting to grant RBAC permissions not currently held" in escalation


# ------------------------------------------------------------------ namespace-scoped install

SCOPED = ("team-a", "team-b")


def rights(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every right a list of RBAC rules grants."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_watch_namespaces_render_a_role_in_each_and_no_cluster_wide_right(cluster: Cluster):
    everywhere = render(cluster)
    docs = render(cluster, "--set", f"watchNamespaces={{{','.join(SCOPED)}}}")
    account = one(docs, "ServiceAccount")["metadata"]
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert sorted(roles) == sorted(bindings) == sorted(SCOPED)
    for ns, binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[ns]["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}]
    assert not [d["kind"] for d in docs if d["kind"].startswith("Cluster")]
    # each Role holds the cluster-wide install's rights less those on kinds the API server serves
    # cluster-scoped (which no Role can grant, and which the scoped operator does without)
    all_rights = rights(one(everywhere, "ClusterRole")["rules"])
    cluster_scoped = set(cluster.kubectl("api-resources", "--namespaced=false", "-o", "name").stdout.split())
    for role in roles.values():
        dropped = all_rights - rights(role["rules"])
        assert rights(role["rules"]) <= all_rights
        assert dropped and {f"{r.split('/')[0]}.{g}".rstrip(".") for g, r, _ in dropped} <= cluster_scoped, dropped
    # kopf and the operator's own calls are given the same namespaces
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    command = c["command"]
    assert "--all-namespaces" not in command
    assert tuple(command[i + 1] for i, a in enumerate(command) if a == "--namespace") == SCOPED
    assert [a for a in command if a not in SCOPED and a != "--namespace"] == [a for a in COMMAND if a != "--all-namespaces"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert handlers.watch_namespaces(env[api.WATCH_NAMESPACES_VAR]) == SCOPED
    # and the default install passes none: every namespace
    (c,) = one(everywhere, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert api.WATCH_NAMESPACES_VAR not in {e["name"] for e in c["env"]}


@pytest.fixture(scope="module")
def scoped(cluster: Cluster):
    """The chart installed to serve two fresh namespaces; a third is served by no one."""
    ns = restricted_namespace(cluster, "zeroth-system")
    watched = [restricted_namespace(cluster, "watched") for _ in range(2)]
    other = restricted_namespace(cluster, "other")
    try:
        yield install(cluster, "scoped", ns, "--set", f"watchNamespaces={{{','.join(watched)}}}",
                      "--set", "replicaCount=0"), watched, other
    finally:
        cluster.run("helm", "uninstall", "scoped", "-n", ns, "--wait", "--timeout", f"{scaled(60):.0f}s", check=False)
        for name in (ns, *watched, other):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_scoped_install_creates_its_roles_in_the_watched_namespaces_only(cluster: Cluster, scoped):
    rel, watched, other = scoped
    selector = f"app.kubernetes.io/instance={rel.name},app.kubernetes.io/managed-by=Helm"
    for kind in ("roles", "rolebindings"):
        listed = cluster.get(kind, "-A", "-l", selector)["items"]
        assert sorted(o["metadata"]["namespace"] for o in listed) == sorted(watched), kind
    for kind in ("clusterroles", "clusterrolebindings"):
        assert not cluster.get(kind, "-l", selector)["items"], kind


def test_scoped_operator_holds_rights_in_its_namespaces_and_none_cluster_wide(cluster: Cluster, scoped):
    """SubjectAccessReviews for the scoped release's ServiceAccount: what it may do in a watched
    namespace, in another one, and cluster-wide ("-")."""
    rel, watched, other = scoped
    want: dict[str, bool] = {}
    for verb in ("create", "list", "watch", "delete", "get", "patch"):
        for ns in watched:
            want[f"{verb} pods {ns}"] = True
        want[f"{verb} pods {other}"] = False
        want[f"{verb} pods -"] = False
    for verb in ("get", "list", "watch"):
        want |= {f"{verb} reasoningruns.zeroth.dev {watched[0]}": True,
                 f"{verb} reasoningruns.zeroth.dev {other}": False, f"{verb} reasoningruns.zeroth.dev -": False}
    want |= {f"patch reasoningruns.zeroth.dev/status {watched[1]}": True,
             f"patch reasoningruns.zeroth.dev/status {other}": False, "patch reasoningruns.zeroth.dev/status -": False,
             f"create secrets {watched[0]}": True, f"create secrets {other}": False, "create secrets -": False,
             f"create roles.rbac.authorization.k8s.io {watched[0]}": True,
             f"create roles.rbac.authorization.k8s.io {other}": False,
             f"create events {other}": False, f"get configmaps {other}": False, "list configmaps -": False,
             f"get secrets {watched[0]}": False, "list namespaces -": False,
             "list customresourcedefinitions.apiextensions.k8s.io -": False,
             "watch customresourcedefinitions.apiextensions.k8s.io -": False}
    got = access_of(cluster, rel.user, list(want))
    width = max(map(len, want))
    print(f"\nSubjectAccessReviews of {rel.user}\n{'verb resource namespace':<{width}}  allowed  expected")
    for row, expected in want.items():
        print(f"{row:<{width}}  {'yes' if got[row] else 'no':<7}  {'yes' if expected else 'no'}"
              f"{'' if got[row] == expected else '  <-- WRONG'}")
    assert not [row for row, expected in want.items() if got[row] != expected]
