"""kopf handlers: read the run and its pods, call the pure builders and the pure plan, apply, write status.

Run with `kopf run --standalone --all-namespaces -m zeroth.operator.handlers` (the Helm chart's
command), or namespace-scoped with `--namespace A --namespace B` instead of `--all-namespaces` and
ZEROTH_WATCH_NAMESPACES=A,B (the chart's `watchNamespaces` sets both): then every call it makes,
its own resync's listing included, stays inside those namespaces. The pod watch asks the API server
for the operator's pods only (a label selector), so the rest of the cluster's pods never reach it.

Every watch event of a run, and of any pod it owns, reconciles that run; kopf's first listing
after a (re)start delivers every object once, so a restarted operator converges without
any memory of its own. Reconciling is idempotent: children have fixed names and are created only
when missing (an AlreadyExists answer means done, once the existing one's owner is the run), pods are deleted by name, and the status write
depends only on what the API server holds (see `plan`). That write carries the resourceVersion the
pass read: if the run changed since (a trainer's progress patch, another operator during a rolling
update), the API server answers 409 and the pass starts again from a fresh read.

What a real control plane does to it: every API call has a time limit (API_TIMEOUT_SECONDS), so a
connection that hangs fails the pass, which is retried, instead of holding the run's lock for ever;
a watch stream that goes quiet for longer than ZEROTH_WATCH_IDLE_SECONDS is dropped and opened
again; an API server or etcd that is away makes passes fail, and they are retried with backoff and
by the periodic resync (tests/integration/test_control_plane_faults.py).

The run's config is frozen in its ConfigMap when the run is first seen, and pods are always built
from the frozen copy. Edits act by the field's policy (zeroth/api.py: LIVE, WHILE_SUSPENDED,
IMMUTABLE, enforced by the CRD's CEL rules): the LIVE ones at once; the pod settings, which the API
accepts only while the run is suspended, by freezing the config again in a new ConfigMap
(`status.config`) before the resume creates any pod. `status.observedGeneration` reaches a
generation only once all of it has been acted on.

Identity is the run's uid, never its name alone: a child of the run's name that another run
controls (an earlier run of the same name, deleted and still being collected) is never adopted,
and the run waits for it to go (operator/plan.py; `EarlierRunTerminating`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from prometheus_client import start_http_server

from zeroth import api, metrics, validation
from zeroth.operator import builders
from zeroth.operator import plan as planning

log = logging.getLogger("zeroth.operator")

_locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_statuses: dict[tuple[str, str], dict[str, Any]] = {}  # each run's status as its last pass wrote it
_namespaces: set[str] = set()  # every namespace a run was seen in, so a count can drop to 0
_ensured: set[str] = set()  # uids whose non-pod children were created by this process
_failures: dict[tuple[str, str], int] = {}
_requeues: dict[tuple[str, str], threading.Timer] = {}  # the pending deadline pass of each run
_frozen_runs: dict[tuple[str, str], api.ReasoningRun] = {}  # by (uid, ConfigMap): each config as frozen
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
CONFLICT_RETRIES = 10  # passes started again at once on a 409 before the pass counts as failed
# GPU time and cost come from each run's status (durable: an operator restart does not reset them)
_FROM_STATUS = ("gpu_seconds", "cost")
_metrics = metrics.Metrics(names=tuple(n for n in metrics.exported_by("operator") if n not in _FROM_STATUS))
for _name in ("reconcile_errors", "reconcile_conflicts", "reconcile_seconds"):  # 0 from the start, not absent until the first
    _metrics[_name].labels(handler="reconcile")
_exported: set[tuple[str, str]] = set()  # the runs whose run_phase and run_restarts series exist
_publish_lock = threading.Lock()
_clients: dict[str, Any] = {}


def _labels_from_env(var: str, chart_key: str, value: str) -> dict[str, str]:
    """A JSON object of label names to string values from an environment variable the chart sets."""
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        raise SystemExit(f"{var} must be a JSON object of label names to string values "
                         f"(the chart's {chart_key}), not {value!r}")
    return parsed


def gpu_node_selector(value: str | None) -> dict[str, str]:
    """The default GPU node selector from its environment variable (JSON; the chart's
    `gpuNodeSelector`): unset or empty means the API's default; `{}` means none."""
    if not value:
        return dict(api.DEFAULT_GPU_NODE_SELECTOR)
    return _labels_from_env(api.GPU_NODE_SELECTOR_VAR, "gpuNodeSelector", value)


def pod_monitor_labels(value: str | None) -> dict[str, str]:
    """The extra labels of each run's PodMonitor from their environment variable (JSON; the chart's
    `metrics.podMonitor.labels`, the label the cluster's Prometheus selects PodMonitors by)."""
    return _labels_from_env(api.POD_MONITOR_LABELS_VAR, "metrics.podMonitor.labels", value) if value else {}


def watch_namespaces(value: str | None) -> tuple[str, ...]:
    """The namespaces a namespace-scoped operator serves, from its environment variable
    (comma-separated; the chart's `watchNamespaces`); unset or empty: () for every namespace."""
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    bad = [n for n in names if not _DNS_LABEL.fullmatch(n)]
    if bad:
        raise SystemExit(f"{api.WATCH_NAMESPACES_VAR} must be namespace names separated by commas "
                         f"(the chart's watchNamespaces), not {value!r}")
    return tuple(dict.fromkeys(names))


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# read when kopf imports this module: a bad value stops the operator before it touches any run
_settings: dict[str, Any] = {"gpu_node_selector": gpu_node_selector(os.environ.get(api.GPU_NODE_SELECTOR_VAR)),
                             "pod_monitor_labels": pod_monitor_labels(os.environ.get(api.POD_MONITOR_LABELS_VAR)),
                             "watch_namespaces": watch_namespaces(os.environ.get(api.WATCH_NAMESPACES_VAR))}

# The pods the operator watches, as a label selector the API server applies (kopf passes it as the
# watch's labelSelector): every other pod of the cluster stays on the server.
POD_LABELS = {builders.LABEL_MANAGED_BY: builders.MANAGED_BY, builders.LABEL_RUN: None}  # None: present
POD_SELECTOR = ",".join(k if v is None else f"{k}={v}" for k, v in POD_LABELS.items())

# connect, read: the time limits of every call the operator makes (its own and kopf's)
API_TIMEOUT_SECONDS = (10.0, float(os.environ.get("ZEROTH_API_TIMEOUT_SECONDS", "30")))


class _StaleRead(Exception):
    """The run changed between this pass's read and its status write (409 Conflict)."""


class _EarlierChild(Exception):
    """A child of the run's name exists but another run controls it: an earlier run of the same
    name, deleted and still being collected. It is never adopted; the run waits for it to go."""


class _BoundedApiClient(client.ApiClient):
    """An ApiClient whose calls all have a time limit: the client's default is none at all, and a
    connection that stops answering (a dropped load balancer flow, a hung API server) would then
    block the call, and the run's lock, for ever."""

    def call_api(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().call_api(*args, _request_timeout=_request_timeout or API_TIMEOUT_SECONDS, **kwargs)


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # Events are posted by us, for phase changes, not per handler call
    settings.watching.server_timeout = 300
    settings.watching.connect_timeout = settings.networking.connect_timeout = API_TIMEOUT_SECONDS[0]
    settings.networking.request_timeout = API_TIMEOUT_SECONDS[1]
    # a stream with no event (bookmarks included: about one a minute) for this long is presumed
    # cut somewhere between here and the API server, and opened again
    settings.watching.inactivity_timeout = float(os.environ.get("ZEROTH_WATCH_IDLE_SECONDS", "70"))
    # server-side: without it kopf lists and streams every pod of the cluster (or namespace) and
    # drops the others only after decoding them (the handler's `labels` filter)
    settings.watching.label_selectors["v1", "pods"] = POD_SELECTOR
    if _settings["watch_namespaces"]:
        # kopf lists and watches namespaces (to match --namespace patterns; ours are exact names)
        # and CRDs, both cluster-wide: a namespace-scoped operator has no right to either, and
        # kopf would retry each refusal for about a minute before serving anything
        settings.scanning.disabled = True
    port = int(os.environ.get("ZEROTH_OPERATOR_METRICS_PORT", "8000"))
    if port:
        start_http_server(port, registry=_metrics.registry)
    if os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
        config.load_kube_config()
    else:
        config.load_incluster_config()
    _clients["api"] = api_client = _BoundedApiClient()
    _clients["core"] = client.CoreV1Api(api_client)
    _clients["custom"] = client.CustomObjectsApi(api_client)
    _clients["rbac"] = client.RbacAuthorizationV1Api(api_client)
    _clients["networking"] = client.NetworkingV1Api(api_client)
    resync = float(os.environ.get("ZEROTH_RESYNC_SECONDS", "60"))
    threading.Thread(target=_resync_forever, args=(resync,), name="zeroth-resync", daemon=True).start()


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def run_event(event: dict[str, Any], namespace: str, name: str, **_: Any) -> None:
    if event.get("type") == "DELETED":
        with _locks[(namespace, name)]:  # after a pass in flight, which would record the phase again
            _statuses.pop((namespace, name), None)  # the garbage collector deletes the children
            uid = event["object"]["metadata"]["uid"]
            for key in [k for k in _frozen_runs if k[0] == uid]:
                _frozen_runs.pop(key, None)
            pending = _requeues.pop((namespace, name), None)
            if pending:
                pending.cancel()
            _publish_phases()
        return
    reconcile(namespace, name)


@kopf.on.event("v1", "pods", labels={k: kopf.PRESENT if v is None else v for k, v in POD_LABELS.items()})
def pod_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    reconcile(namespace, labels[builders.LABEL_RUN])


def reconcile(namespace: str, name: str) -> None:
    """One pass over one run; serialised per run (run and pod events arrive on different workers).

    A pass that meets a 409 on its status write starts again at once from a fresh read; a failed
    pass is retried with backoff (kopf does not retry event handlers), and every run is reconciled
    again every ZEROTH_RESYNC_SECONDS in case an event was missed.
    """
    key = (namespace, name)
    t0 = time.perf_counter()
    try:
        with _locks[key]:
            for again in range(CONFLICT_RETRIES, -1, -1):
                try:
                    _reconcile(namespace, name)
                    break
                except _StaleRead:
                    _metrics["reconcile_conflicts"].labels(handler="reconcile").inc()
                    if not again:
                        raise
        _failures.pop(key, None)
    except Exception:
        if _gone(namespace, name):  # deleted meanwhile, or its namespace: what failed no longer matters
            _failures.pop(key, None)
            return
        _metrics["reconcile_errors"].labels(handler="reconcile").inc()
        _failures[key] = failures = _failures.get(key, 0) + 1
        retry = threading.Timer(min(RETRY_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS), _quietly, key)
        retry.daemon = True
        retry.start()
        raise
    finally:
        _metrics["reconcile_seconds"].labels(handler="reconcile").observe(time.perf_counter() - t0)


def _gone(namespace: str, name: str) -> bool:
    """Whether run `name` no longer exists or is being deleted (a failed pass then is no failure:
    its children went, or are going, with it). False when that cannot be told."""
    try:
        body = _clients["custom"].get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
    except ApiException as e:
        return e.status == 404
    except Exception:  # noqa: BLE001 - unreachable API server: a failure like any other
        return False
    return bool(body["metadata"].get("deletionTimestamp"))


def _quietly(namespace: str, name: str) -> None:
    try:
        reconcile(namespace, name)
    except Exception:  # noqa: BLE001 - logged, and retried again by reconcile
        log.exception("reconciling %s/%s failed", namespace, name)


def _resync_forever(seconds: float) -> None:
    while True:
        time.sleep(seconds)
        try:
            runs = _list_runs(_settings["watch_namespaces"])
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("listing runs for the resync failed")
            continue
        # children deleted since (by hand, or the garbage collector taking a same-named child of
        # an earlier run with the same name) are created again this round
        _ensured.clear()
        listed = {(run["metadata"]["namespace"], run["metadata"]["name"]) for run in runs}
        for key in set(_statuses) - listed:  # deleted while no watch saw it
            with _locks[key]:
                _statuses.pop(key, None)
        _publish_phases()
        for run in runs:
            _quietly(run["metadata"]["namespace"], run["metadata"]["name"])


def _list_runs(namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every run the operator serves: cluster-wide, or in each of its namespaces (where a
    namespace-scoped operator's rights end)."""
    custom = _clients["custom"]
    if not namespaces:
        return custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
    return [run for ns in namespaces
            for run in custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)["items"]]


def _reconcile(namespace: str, name: str) -> None:
    core, custom = _clients["core"], _clients["custom"]
    try:
        body = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
    except ApiException as e:
        if e.status == 404:  # deleted: the garbage collector deletes the pods
            _end_kueue_groups(namespace, name)
            _statuses.pop((namespace, name), None)
            _publish_phases()
            return
        raise
    if body["metadata"].get("deletionTimestamp"):
        _end_kueue_groups(namespace, name)
        return
    uid = body["metadata"]["uid"]
    live = validation.validate({k: v for k, v in body.items() if k != "status"}, source=f"{namespace}/{name}")
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    earlier: list[str] = []  # children of the run's names that another run controls
    config = status.get("config") or builders.config_map_name(name)
    observed = generation
    waiting_edit = False
    try:
        frozen = _frozen(live, uid, config)
        run = builders.refrozen(frozen, live, api.LIVE)  # what the run does now
        edited = builders.refrozen(frozen, live, api.LIVE + api.WHILE_SUSPENDED)
        if edited.spec != run.spec:  # an edit made while suspended (the API refuses it otherwise)
            if status.get("phase") not in planning.TERMINAL and (live.spec.suspend or status.get("phase") == "Suspended"):
                config = builders.config_map_name(name, generation)  # no pod reads it before the resume
                run = _frozen(edited, uid, config)
            elif status.get("phase") not in planning.TERMINAL:
                # not acted on: suspended, edited and resumed between two passes (or a CRD without
                # the rules that refuse it); it waits for the next suspension, and says so
                observed, waiting_edit = status.get("observedGeneration"), True
    except _EarlierChild as e:
        run, earlier = builders.with_gpu_node_selector(live, _settings["gpu_node_selector"]), [str(e)]
        observed = status.get("observedGeneration")  # nothing of this spec acted on yet
    if not earlier and uid not in _ensured and status.get("phase") not in planning.TERMINAL:
        earlier = _ensure_children(run, uid)
        if not earlier:
            _ensured.add(uid)
    listed = core.list_namespaced_pod(namespace, label_selector=f"{builders.LABEL_RUN}={name}").items
    pods = [_clients["api"].sanitize_for_serialization(p) for p in listed]
    now = datetime.now(timezone.utc)
    p = planning.plan(name, uid, run.spec, status, observed, pods, now, tuple(earlier), _mount_failures(namespace, pods))
    p.status["config"] = config
    if waiting_edit:
        p.status["message"] += (f"; pod settings edited in generation {generation} are not in effect: the run resumed "
                                "before they were frozen; suspend and resume it to apply them")

    # status first: a restart's new attempt number must be stored before its pods change
    if any(status.get(k) != v for k, v in p.status.items()):
        read = body["metadata"]["resourceVersion"]  # the plan holds only for the run as it was read
        try:
            custom.patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.PLURAL, name,
                                                         {"metadata": {"resourceVersion": read},
                                                          "status": _merge_patch(status, p.status)})
        except ApiException as e:
            if e.status == 409:
                raise _StaleRead from e
            raise
    if run.spec.queue_name and p.ends_group:  # first, so that no pod is gone before Kueue knows
        for pod in p.delete:
            _patch_pod(namespace, pod, builders.end_kueue_group())
    for pod in p.delete:
        try:
            core.delete_namespaced_pod(pod, namespace)  # the pod's own grace period (spec: terminationGracePeriodSeconds)
        except ApiException as e:
            if e.status != 404:
                raise
    for pod in p.force_delete:  # lost with its node: no kubelet will finish the deletion
        try:
            core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise
    attempt, resumes = p.status["restarts"], p.status["resumes"]
    for role, number in p.create:
        if role == builders.ROLE_TRAINER:
            obj = builders.trainer_pod(run, uid, number, attempt, resumes, config=config)
        elif role == builders.ROLE_ROLLOUT:
            obj = builders.rollout_pod(run, uid, number, resumes)
        else:
            obj = builders.ray_head_pod(run, uid, resumes)
        _create(obj)
    for ev in p.events:
        _post_event(body, ev, now)
    if p.delete_run:  # last: a run that finishes with a TTL of 0 still writes its final status and Events
        _delete_run(namespace, name, uid)
        return
    if p.requeue_after is not None:  # a deadline falls due with no event to say so: one timer a run
        key = (namespace, name)
        if key in _requeues:
            _requeues[key].cancel()
        _requeues[key] = later = threading.Timer(p.requeue_after + 1.0, _quietly, key)
        later.daemon = True
        later.start()
    _statuses[(namespace, name)] = p.status
    _publish_phases()


def _delete_run(namespace: str, name: str, uid: str) -> None:
    """A finished run whose ttlSecondsAfterFinished has passed: deleted (the garbage collector takes
    its children), only if it is still the run this pass read (uid precondition), never a new run of
    the same name."""
    log.info("deleting %s/%s: finished ttlSecondsAfterFinished ago", namespace, name)
    try:
        _clients["custom"].delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name,
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)))
    except ApiException as e:
        if e.status not in (404, 409):  # gone already, or a new run of that name (the precondition failed)
            raise


MOUNT_EVENT_FRESH = timedelta(seconds=180)


def _mount_failures(namespace: str, pods: list[dict[str, Any]]) -> dict[str, str]:
    """What the kubelet said of a volume it cannot mount (a missing Secret, a claim that will not
    attach), by pod name, for the pods that wait on a node to start: it says so only in a
    FailedMount Event, never in the pod's status. One list call, and only while such a pod exists."""
    waiting = {p["metadata"]["uid"]: p["metadata"]["name"] for p in pods
               if (p.get("status") or {}).get("phase", "Pending") == "Pending" and (p.get("spec") or {}).get("nodeName")}
    if not waiting:
        return {}
    try:
        events = _clients["core"].list_namespaced_event(namespace, field_selector="reason=FailedMount").items
    except ApiException as e:  # the reason is a nicety: the pass goes on without it
        log.warning("listing FailedMount Events in %s failed: %s", namespace, e.reason)
        return {}
    # the kubelet retries a mount about every 2 minutes and counts each failure into one Event: an
    # Event not repeated for longer than that is one the mount got past (a Secret that came late)
    recent = datetime.now(timezone.utc) - MOUNT_EVENT_FRESH
    seen = [(when, e) for e in events if e.involved_object.uid in waiting
            and (when := e.last_timestamp or e.event_time or e.metadata.creation_timestamp) and when >= recent]
    return {waiting[e.involved_object.uid]: e.message or "" for _, e in sorted(seen, key=lambda x: x[0])}


def _post_event(body: dict[str, Any], ev: planning.Event, now: datetime) -> None:
    """A core/v1 Event on the run, posted with our own client: from any thread (kopf.event works
    only inside kopf's handler context, not in our retries and resync), and best-effort, as kopf's."""
    meta = body["metadata"]
    stamp = planning.stamp(now)
    event = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": ev.type, "reason": ev.reason, "message": ev.message[:1024],
        "source": {"component": "zeroth-operator"}, "reportingComponent": "zeroth-operator",
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }
    try:
        _clients["core"].create_namespaced_event(meta["namespace"], event)
    except ApiException as e:  # a lost Event is no reason to fail the pass (kopf drops them too)
        log.warning("posting the %s Event of %s/%s failed: %s", ev.reason, meta["namespace"], meta["name"], e.reason)


def _end_kueue_groups(namespace: str, name: str) -> None:
    """A deleted run's queued pods, deleted by the garbage collector, end their Kueue pod group:
    Kueue then finishes its Workload, releases the quota and lets the pods go."""
    listed = _clients["core"].list_namespaced_pod(namespace, label_selector=f"{builders.LABEL_RUN}={name},"
                                                  f"{builders.KUEUE_GROUP_LABEL}").items
    for pod in listed:
        if pod.metadata.deletion_timestamp and (pod.metadata.annotations or {}).get(builders.KUEUE_RETRIABLE_ANNOTATION) != "false":
            _patch_pod(namespace, pod.metadata.name, builders.end_kueue_group())


def _patch_pod(namespace: str, name: str, patch: dict[str, Any]) -> None:
    try:
        _clients["core"].patch_namespaced_pod(name, namespace, patch)
    except ApiException as e:
        if e.status != 404:
            raise


def _frozen(run: api.ReasoningRun, uid: str, config: str) -> api.ReasoningRun:
    """The run as frozen in ConfigMap `config`: read once per process (it never changes), or, when
    missing, written now from `run` (the operator's GPU node selector filled in where unset).
    Raises _EarlierChild when another run owns a ConfigMap of that name."""
    frozen = _frozen_runs.get((uid, config))
    if frozen is None:
        resolved = builders.with_gpu_node_selector(run, _settings["gpu_node_selector"])
        try:
            stored = _clients["core"].read_namespaced_config_map(config, run.metadata.namespace)
            if _controller(stored) != uid:
                raise _EarlierChild(f"ConfigMap {config}")
            frozen = validation.validate(json.loads(stored.data[builders.CONFIG_KEY]), source=config)
        except ApiException as e:
            if e.status != 404:
                raise
            _create(builders.config_map(resolved, uid, config))
            frozen = resolved
        _frozen_runs[(uid, config)] = frozen
    return frozen.model_copy(update={"metadata": run.metadata})


def _controller(obj: Any) -> str | None:
    """The uid of the object's controller (a client model or a dict), None when it has none."""
    refs = obj["metadata"].get("ownerReferences") if isinstance(obj, dict) else obj.metadata.owner_references
    for ref in refs or []:
        controller, ref_uid = (ref.get("controller"), ref.get("uid")) if isinstance(ref, dict) else (ref.controller, ref.uid)
        if controller:
            return ref_uid
    return None


def _ensure_children(run: api.ReasoningRun, uid: str) -> list[str]:
    """Every child that is not a pod, created when missing and never rewritten. One that exists
    already is read back for its owner only: the names of those another run controls (an earlier
    run of the same name), for the run to wait on. The Secret's name carries the uid instead: the
    operator may not read Secrets."""
    earlier = []
    for obj in builders.support_objects(run, uid, token=secrets.token_hex(32), pod_monitor=_has_pod_monitor(),
                                       pod_monitor_labels=_settings["pod_monitor_labels"]):
        if obj["kind"] == "ConfigMap":  # written by _frozen
            continue
        if _create(obj) or obj["kind"] == "Secret":
            continue
        stored = _read(obj)
        if not stored["metadata"] and _create(obj):  # gone between the two calls: ours now
            continue
        if _controller(stored) != uid:
            earlier.append(f"{obj['kind']} {obj['metadata']['name']}")
    return earlier


def _read(obj: dict[str, Any]) -> dict[str, Any]:
    """A child as stored, as a dict; {"metadata": {}} if it went meanwhile (it is then no one's)."""
    meta = obj["metadata"]
    try:
        if obj["kind"] == "PodMonitor":
            group, version = obj["apiVersion"].split("/")
            return _clients["custom"].get_namespaced_custom_object(group, version, meta["namespace"], "podmonitors",
                                                                   meta["name"])
        api_name, kind = _KINDS[obj["kind"]]
        stored = getattr(_clients[api_name], f"read_namespaced_{kind}")(meta["name"], meta["namespace"])
        return _clients["api"].sanitize_for_serialization(stored)
    except ApiException as e:
        if e.status != 404:
            raise
        return {"metadata": {}}


# the client API and method-name stem of each child kind: create_namespaced_<stem>, read_namespaced_<stem>
_KINDS = {
    "ConfigMap": ("core", "config_map"),
    "Secret": ("core", "secret"),
    "ServiceAccount": ("core", "service_account"),
    "Service": ("core", "service"),
    "Pod": ("core", "pod"),
    "Role": ("rbac", "role"),
    "RoleBinding": ("rbac", "role_binding"),
    "NetworkPolicy": ("networking", "network_policy"),
}


def _create(obj: dict[str, Any]) -> bool:
    """Creates `obj`; False when it existed already (whoever made it)."""
    namespace = obj["metadata"]["namespace"]
    try:
        if obj["kind"] == "PodMonitor":
            group, version = obj["apiVersion"].split("/")
            _clients["custom"].create_namespaced_custom_object(group, version, namespace, "podmonitors", obj)
        else:
            api_name, kind = _KINDS[obj["kind"]]
            getattr(_clients[api_name], f"create_namespaced_{kind}")(namespace, obj)
    except ApiException as e:
        if e.status == 409:  # AlreadyExists: created before (by us, before a restart, or by another run)
            return False
        if e.status == 403 and _namespace_terminating(e):  # the run goes with its namespace: nothing to do
            return True
        raise
    return True


def _namespace_terminating(e: ApiException) -> bool:
    try:
        causes = json.loads(e.body)["details"]["causes"]
    except (TypeError, ValueError, KeyError):
        return False
    return any(cause.get("reason") == "NamespaceTerminating" for cause in causes)


def _has_pod_monitor() -> bool:
    """Whether the cluster serves monitoring.coreos.com/v1 (the Prometheus Operator's PodMonitor);
    asked once per new run (one discovery call: /apis is open to every authenticated user, so a
    namespace-scoped operator needs no cluster-wide right for it)."""
    groups = client.ApisApi(_clients["api"]).get_api_versions().groups
    return any(g.name == "monitoring.coreos.com" and any(v.version == "v1" for v in g.versions) for g in groups)


def _publish_phases() -> None:
    """The runs gauge by namespace and phase, and each run's phase and restarts (passes of several runs
    publish at once: one at a time)."""
    with _publish_lock:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        runs = dict(_statuses)
        for (ns, _), status in runs.items():
            counts[(ns, status["phase"])] += 1
        gauge = _metrics["runs"]
        _namespaces.update(ns for ns, _ in runs)
        for ns in _namespaces:
            for phase in api.PHASES:
                gauge.labels(namespace=ns, phase=phase).set(counts.get((ns, phase), 0))
        for ns, name in _exported - set(runs):  # a deleted run's series end with it
            for phase in api.PHASES:
                _metrics["run_phase"].remove(name, ns, phase)
            _metrics["run_restarts"].remove(name, ns)
        for (ns, name), status in runs.items():
            for phase in api.PHASES:
                _metrics["run_phase"].labels(run=name, namespace=ns, phase=phase).set(1 if phase == status["phase"] else 0)
            _metrics["run_restarts"].labels(run=name, namespace=ns).set(status["restarts"])
        _exported.clear()
        _exported.update(runs)


def _merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The status patch (a JSON merge patch, which keeps map keys it does not name): a pod gone from
    status.compute.pods is named with null, so that it is removed and counted once, in `closed`."""
    gone = ((old.get("compute") or {}).get("pods") or {}).keys() - new["compute"]["pods"].keys()
    if not gone:
        return new
    return {**new, "compute": {**new["compute"], "pods": {**new["compute"]["pods"], **dict.fromkeys(gone)}}}


class _ComputeCollector:
    """zeroth_gpu_seconds and zeroth_cost of each run, read from its status.compute at each scrape:
    counters that an operator restart does not reset."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        gpu, cost = (metrics.BY_NAME[n] for n in _FROM_STATUS)
        families = CounterMetricFamily(gpu.full_name, gpu.help, labels=gpu.labels), \
            CounterMetricFamily(cost.full_name, cost.help, labels=cost.labels)
        for (ns, name), status in list(_statuses.items()):
            compute = status["compute"]
            families[0].add_metric([name, ns], compute["gpuSeconds"])
            families[1].add_metric([name, ns, compute["currency"]], compute["cost"])
        yield from families


_metrics.registry.register(_ComputeCollector())
