#!/usr/bin/env python3
"""Starts and stops a real Kueue against the control plane of hack/cluster.py.

    python hack/kueue.py up      # build if needed (hack/build-kueue.sh), start, wait until its webhooks answer
    python hack/kueue.py down    # remove its webhook configurations, stop it

Kueue runs as a process on loopback, like the control plane, with its own CRDs and webhook manifests
from its Go module. What differs from a Deployment in a cluster, and why:
  * its webhooks are reached by URL (https://127.0.0.1:PORT/...) instead of through a Service,
    because nothing routes Service IPs here; the serving certificate is signed by the control
    plane's CA for IP 127.0.0.1, so Kueue's own certificate management is off;
  * only the `pod` integration is enabled (Kueue's plain pod groups, which is how it admits
    ReasoningRun pods), and its pod webhooks see only pods that carry a queue name, so a Kueue that
    was killed without `down` cannot block the creation of other pods;
  * the on-demand visibility API server (an aggregated API) is off.
Standard library only, like cluster.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster  # noqa: E402 - this directory's cluster.py

NAMESPACE = "kueue-system"
PORTS = {"webhook": 26910, "health": 26911, "metrics": 26912, "visibility": 26913}
WEBHOOKS = {"mutating": "kueue-mutating-webhook-configuration", "validating": "kueue-validating-webhook-configuration"}
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_NAMESPACES = {"matchExpressions": [  # Kueue's recommended default: every namespace but the system's
    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]}]}
STATE = cluster.STATE / "kueue"


def build() -> Path:
    out = subprocess.run([str(cluster.HACK / "build-kueue.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def make_cert(certs: Path) -> None:
    """A serving certificate for 127.0.0.1 signed by the control plane's CA (its webhooks and metrics)."""
    pki = cluster.STATE / "pki"
    certs.mkdir(parents=True, exist_ok=True)
    ext = certs / "serving.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    cluster._openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kueue-webhook",
                     "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.csr"))
    cluster._openssl("x509", "-req", "-in", str(certs / "tls.csr"), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
                     "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(certs / "tls.crt"))


def configuration(certs: Path) -> dict:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{PORTS['health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{PORTS['metrics']}"},
        "webhook": {"host": "127.0.0.1", "port": PORTS["webhook"], "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": MANAGED_NAMESPACES,
        "integrations": {"frameworks": ["pod"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


def webhook_configurations(bins: Path, manifests: Path, ca_bundle: str) -> list[dict]:
    """Upstream's webhook configurations, keeping Kueue's own API's webhooks and the pod ones, each
    pointed at the loopback URL of the Kueue process."""
    text = manifests.read_text()
    out = []
    for kind, name in WEBHOOKS.items():
        doc = json.loads(cluster.kubectl(  # the manifests are YAML: kubectl reads them, stores nothing
            bins, "create", "--dry-run=client", "-o", "json", "-f", "-",
            stdin=_document(text, f"{kind.capitalize()}WebhookConfiguration")))
        hooks = []
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            if "kueue-x-k8s-io" not in path and not path.endswith("-v1-pod"):
                continue
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{PORTS['webhook']}{path}", "caBundle": ca_bundle}
            if path.endswith("-v1-pod"):
                hook["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
                hook["namespaceSelector"] = MANAGED_NAMESPACES
            hooks.append(hook)
        doc["metadata"] = {"name": name}
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def _document(text: str, kind: str) -> str:
    for doc in re.split(r"^---\s*$", text, flags=re.M):
        if re.search(rf"^kind: {kind}\s*$", doc, flags=re.M):
            return doc
    raise SystemExit(f"no {kind} in the webhook manifests")


def up() -> None:
    bins = cluster.bin_dir()
    if not cluster.is_up(bins):
        raise SystemExit("the control plane is not up: run `python hack/cluster.py up` first")
    kdir = build()
    if cluster._running("kueue") is not None and (STATE / "ready").exists():
        cluster.log("kueue: already up")
        return
    down(quiet=True, bins=bins)
    t0 = time.monotonic()
    certs = STATE / "certs"
    make_cert(certs)
    config = STATE / "config.yaml"
    config.write_text(json.dumps(configuration(certs), indent=2))
    kubectl = lambda *a, stdin=None: cluster.kubectl(bins, *a, stdin=stdin)  # noqa: E731
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(kdir / "crds"))
    kubectl("wait", "--for=condition=Established", f"--timeout={cluster.scaled(60):.0f}s", *[
        f"crd/{p.name.removeprefix('kueue.x-k8s.io_').removesuffix('.yaml')}.kueue.x-k8s.io" for p in sorted((kdir / "crds").glob("*.yaml"))])
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    cluster.start("kueue", [str(kdir / "bin" / "kueue"), f"--config={config}", f"--kubeconfig={cluster.kubeconfig()}",
                            f"--visibility-server-port={PORTS['visibility']}"],
                  env={**os.environ, "KUEUE_METRICS_CERT_DIR": str(certs)})
    cluster.wait_for("kueue /readyz", lambda: cluster._http_ok(f"http://127.0.0.1:{PORTS['health']}/readyz"), component="kueue")
    ca_bundle = base64.b64encode((cluster.STATE / "pki" / "ca.crt").read_bytes()).decode()
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": webhook_configurations(bins, kdir / "webhooks.yaml", ca_bundle)}))
    # the API server reaches the webhooks: a server-side dry run of a Kueue object goes through them
    probe = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "kueue-probe"}}
    cluster.wait_for("kueue's webhooks", lambda: kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe)),
                     component="kueue")
    (STATE / "ready").write_text("\n")
    cluster.log(f"kueue up in {time.monotonic() - t0:.1f}s (webhooks on 127.0.0.1:{PORTS['webhook']})")


def down(quiet: bool = False, bins: Path | None = None) -> None:
    bins = bins or cluster.bin_dir()
    (STATE / "ready").unlink(missing_ok=True)
    STATE.mkdir(parents=True, exist_ok=True)
    if cluster.is_up():
        for kind, name in WEBHOOKS.items():
            cluster.kubectl(bins, "delete", f"{kind}webhookconfiguration", name, "--ignore-not-found")
    stopped = cluster.stop(["kueue"])
    if not quiet or stopped:
        cluster.log("kueue stopped" if stopped else "kueue: not running")


if __name__ == "__main__":
    sys.exit(cluster.main(sys.argv, {"up": up, "down": down}, __doc__))
