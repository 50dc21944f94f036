"""Trainer rank 0 writes `status.progress` of its own ReasoningRun.

The pod's ServiceAccount may `get` and `patch` `reasoningruns/status` of this one run and nothing
else (docs/operator.md), so the writer sends a merge patch of `{"status": {"progress": {...}}}`
only: no read-modify-write, and no other field of the status (the operator owns those).

Patches are rate-limited to one every `interval` seconds; what arrives in between is kept and goes
out with the next patch, and a checkpoint (the last step always makes one) forces a patch. An API
error is logged and training goes on; failed attempts back off up to a minute, so an unreachable
API server costs a bounded share of training time. Calls are synchronous: the cost of a patch is
one small request on rank 0.

Active only on a cluster: with ZEROTH_RUN, ZEROTH_NAMESPACE and KUBERNETES_SERVICE_HOST set.
The credentials are the pod's mounted ServiceAccount token (`SERVICE_ACCOUNT_DIR`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zeroth import api

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
INTERVAL = 5.0
MAX_BACKOFF = 60.0
TIMEOUT = (3.0, 10.0)  # connect, read (seconds)
FIELD_MANAGER = "zeroth-trainer"  # the owner of status.progress in the run's managedFields
# Progress's fields as the API spells them: the single source is zeroth.api.Progress
FIELDS = tuple(f.alias for f in api.Progress.model_fields.values())


def active(environ: Mapping[str, str] = os.environ) -> bool:
    return all(environ.get(k) for k in ("ZEROTH_RUN", "ZEROTH_NAMESPACE", "KUBERNETES_SERVICE_HOST"))


def api_client(token_dir: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] = os.environ):
    """A `kubernetes.client.ApiClient` authenticated as the pod's ServiceAccount: the in-cluster
    config, read from `token_dir` (`token`, `ca.crt`) and KUBERNETES_SERVICE_HOST/PORT."""
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=str(token_dir / "token"), cert_filename=str(token_dir / "ca.crt"),
                          environ=environ).load_and_set(configuration)
    configuration.retries = 0  # the next patch is the retry; a hung API server must not hold the step
    return client.ApiClient(configuration)


class StatusWriter:
    """Progress of run `name` in `namespace`, patched through `custom_api` (a CustomObjectsApi)."""

    def __init__(self, name: str, namespace: str, custom_api: Any, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.namespace = namespace
        self.api = custom_api
        self.interval = interval
        self.clock = clock
        self.progress: dict[str, Any] = {}
        self.sent: dict[str, Any] = {}  # what the API server last accepted
        self.last_attempt: float | None = None
        self.wait = interval  # grows after failures, back to `interval` after a success
        self.last_error: Exception | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ,
                         token_dir: Path | None = None, **kwargs: Any) -> StatusWriter | None:
        """The writer for ZEROTH_RUN in ZEROTH_NAMESPACE, or None off a cluster or when the
        ServiceAccount's credentials cannot be read (logged: progress is not worth a failed run).
        Credentials from `token_dir` (tests), else the in-cluster path."""
        if not active(environ):
            return None
        if token_dir is None:
            token_dir = SERVICE_ACCOUNT_DIR
        try:
            from kubernetes import client

            custom_api = client.CustomObjectsApi(api_client(token_dir, environ))
        except Exception as e:  # noqa: BLE001 - a missing token or package only loses status.progress
            log.warning("status.progress will not be written: %s", e)
            return None
        return cls(environ["ZEROTH_RUN"], environ["ZEROTH_NAMESPACE"], custom_api, **kwargs)

    def update(self, force: bool = False, **fields: Any) -> bool:
        """Records progress fields (camelCase; None and NaN ignored: JSON has no NaN, and null would
        delete the field); patches when the last attempt is old enough, or at once with `force`.
        True when a patch was accepted."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise KeyError(f"unknown progress fields {sorted(unknown)}; known: {list(FIELDS)}")
        self.progress.update({k: v for k, v in fields.items() if v is not None and _finite(v)})
        return self.flush(force=force)

    def flush(self, force: bool = True) -> bool:
        """Patches what changed since the last accepted patch; `force` ignores the rate limit.
        True when a patch was accepted."""
        if self.progress == self.sent:
            return False
        now = self.clock()
        if not force and self.last_attempt is not None and now - self.last_attempt < self.wait:
            return False
        self.last_attempt = now
        body = {"status": {"progress": dict(self.progress)}}
        try:
            self.api.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, self.namespace, api.PLURAL, self.name, body,
                field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json", _request_timeout=TIMEOUT)
        except Exception as e:  # noqa: BLE001 - never stop training for a status write
            self.last_error = e
            self.wait = min(self.wait * 2, MAX_BACKOFF)
            log.warning("patching %s/%s status.progress failed (next try in %.0f s): %s",
                        self.namespace, self.name, self.wait, _short(e))
            return False
        self.sent = body["status"]["progress"]
        self.wait = self.interval
        return True


def _finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


def _short(e: Exception) -> str:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    return f"HTTP {status} {reason}" if status else f"{type(e).__name__}: {e}"
