"""What the operator should do next for one run, decided from the run and its pods alone.

`plan` is pure: given the run's spec and status as stored, the run's pods as listed, and the time,
it returns the pods to create and delete, the status to write and the Event to post. The handlers
only carry it out, so every decision here is unit-tested without a cluster, and an operator killed
anywhere converges: the plan depends on nothing but what the API server holds.

Gang restarts are ordered for that: the failed attempt's successor number is written to
`status.restarts` first; pods of any other attempt are deleted; the new attempt's pods (named with
the attempt's number) are created once every older one has ended. Whatever step a kill interrupts,
the next plan finishes the job.

Resuming a suspended run is ordered the same way: `status.resumes` is counted up first, and the
new pods of a queued run form the Kueue pod group of that number.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from zeroth import api
from zeroth.operator.builders import (GPU_RESOURCE, LABEL_ATTEMPT, LABEL_INDEX, LABEL_RANK, LABEL_ROLE, ROLE_RAY_HEAD,
                                      ROLE_ROLLOUT, ROLE_TRAINER, ray_head_name, rollout_pod_name, rollout_selector, trainer_pod_name)

TERMINAL = ("Succeeded", "Failed")
EARLIER_RUN_POLL_SECONDS = 5.0  # how often a run held back by another run's children looks again
# A deleted pod still there this long after its grace period ended: no kubelet is left to confirm it
# (its node was lost). A new gang does not wait for it; the pod goes when its node is collected.
LOST_AFTER_SECONDS = 30.0
ACTIVE = ("Pending", "Initializing", "Running")


@dataclass(frozen=True)
class PodState:
    """The facts about one pod that decisions depend on."""

    name: str
    role: str
    number: int  # rank of a trainer pod, index of a rollout pod, 0 for the head
    attempt: int
    phase: str  # the pod's phase: Pending, Running, Succeeded, Failed, Unknown
    scheduled: bool
    gated: tuple[str, ...]  # scheduling gates still on the pod (Kueue's admission gate, while queued)
    ready: bool
    terminating: bool
    reason: str  # why it ended, when it did
    held: tuple[str, str] | None  # what keeps it from running: (reason, message), e.g. ("ErrImagePull", ...)
    disrupted: bool  # taken away rather than failed: evicted, preempted, its node lost (DisruptionTarget)
    exit_code: int | None  # of its first terminated container
    owner: str | None  # the uid of the run that controls it (its controller ownerReference)
    deletion_due: str | None  # when a deleted pod's grace period ends (its deletionTimestamp)

    @classmethod
    def of(cls, pod: dict[str, Any]) -> PodState:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        labels = meta.get("labels") or {}
        role = labels.get(LABEL_ROLE, "")
        number = labels.get(LABEL_RANK if role == ROLE_TRAINER else LABEL_INDEX, "0")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return cls(name=meta["name"], role=role, number=int(number), attempt=int(labels.get(LABEL_ATTEMPT, "0")),
                   phase=status.get("phase", "Pending"), scheduled=bool(spec.get("nodeName")),
                   gated=tuple(g["name"] for g in spec.get("schedulingGates") or []), ready=ready,
                   terminating=bool(meta.get("deletionTimestamp")), reason=_ended_reason(status), held=_held(status),
                   disrupted=_disrupted(status), exit_code=_exit_code(status),
                   owner=next((r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")), None),
                   deletion_due=meta.get("deletionTimestamp"))


def _exit_code(status: dict[str, Any]) -> int | None:
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode") is not None:
            return int(term["exitCode"])
    return None


def _disrupted(status: dict[str, Any]) -> bool:
    """The API server, the scheduler (preemption), the taint manager (a lost node) or the kubelet
    (node-pressure eviction) took the pod away: the DisruptionTarget condition, or an Evicted pod."""
    return status.get("reason") == "Evicted" or any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in status.get("conditions") or [])


# What the kubelet or the scheduler reports when a pod cannot start: these wait for a person, not
# for time (an image that does not exist, a Secret that is missing, a request no node can meet).
HELD_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff")


def _held(status: dict[str, Any]) -> tuple[str, str] | None:
    """Why a pod is held back, as the scheduler or kubelet says it: unschedulable, a container that
    cannot be created or keeps crashing (with OOMKilled when that is how it last ended); else None."""
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return "Unschedulable", c.get("message") or "no node fits the pod"
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in HELD_WAITING:
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("reason")
            reason = "OOMKilled" if last == "OOMKilled" else waiting["reason"]
            message = waiting.get("message") or (f"container {cs.get('name')} was killed for using more memory than "
                                                  "its limit" if reason == "OOMKilled" else "")
            return reason, f"container {cs.get('name')}: {message}" if message else f"container {cs.get('name')}"
    return None


def _ended_reason(status: dict[str, Any]) -> str:
    """`exit code 1 (Error)` from the first terminated container, else the pod's reason or message."""
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return f"exit code {term.get('exitCode')} ({term.get('reason') or 'terminated'})"
    return status.get("reason") or status.get("message") or ""


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What to do: create pods (role, number), delete pods by name, patch status, post events. New
    trainer pods belong to attempt `status["restarts"]`; a queued run's new pods to Kueue pod group
    `<run>-<status["resumes"]>`."""

    create: list[tuple[str, int]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    ends_group: bool = False  # the pods are deleted for good (suspended or finished), not replaced
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds: plan again then, event or not (a deadline falls due)
    force_delete: list[str] = field(default_factory=list)  # lost pods (see _lost): their deletion finished for them
    delete_run: bool = False  # the run finished ttlSecondsAfterFinished ago: delete it (its children go with it)


def plan(name: str, uid: str, spec: api.ReasoningRunSpec, status: dict[str, Any] | None, generation: int | None,
         pods: list[dict[str, Any]], now: datetime, earlier: tuple[str, ...] = (),
         mount_failures: dict[str, str] | None = None) -> Plan:
    """`pods` are those labelled with the run's name; only those the run `uid` controls are its own.
    Any other (an earlier run of the same name, still being collected; a pod made by hand) is never
    adopted, and while one exists no pod is created: their names, host names and Service would be
    shared. `earlier` names other children of the run's names that belong to another run (found by
    the handlers); they hold the run back the same way. `mount_failures`: what the kubelet said (in
    a FailedMount Event) of a volume it cannot mount for a pod waiting to start, by pod name."""
    status = dict(status or {})
    old_phase = status.get("phase") or "Pending"
    restarts = int(status.get("restarts") or 0)
    disruptions = int(status.get("disruptions") or 0)  # of those restarts, how many a disruption caused
    resuming = old_phase == "Suspended" and not spec.suspend
    resumes = int(status.get("resumes") or 0) + (1 if resuming else 0)
    # the attempt whose every rank has been seen running or starting: from then on a rank that goes
    # (deleted, evicted, its node lost) takes the gang with it; a resume starts the count again
    started_attempt = None if resuming else status.get("startedAttempt")
    every = [PodState.of(p) for p in pods]
    failed_mounts = mount_failures or {}
    every = [replace(s, held=("FailedMount", failed_mounts[s.name])) if s.name in failed_mounts and not s.held
             and s.phase == "Pending" else s for s in every]
    states = [s for s in every if s.owner == uid]
    foreign = [s for s in every if s.owner != uid]
    live = [s for s in states if not s.terminating]
    trainers = [s for s in states if s.role == ROLE_TRAINER]
    n_trainers, n_rollouts = spec.trainer.replicas, spec.rollout.replicas
    p = Plan()
    phase, message = old_phase, status.get("message") or ""
    stalled: tuple[str, str] | None = None  # (reason, message) of a pod that holds the run back
    taken = {s.name for s in every}

    def delete(where) -> None:
        p.delete.extend(s.name for s in live if where(s) and s.name not in p.delete)

    active_for = _seconds_since(status.get("startTime"), now)
    deadline = spec.active_deadline_seconds
    if old_phase in TERMINAL:
        # finished: nothing runs any more (failed and completed trainer pods stay, for their logs)
        delete(lambda s: s.phase not in TERMINAL or s.role != ROLE_TRAINER)
    elif deadline is not None and active_for >= deadline:
        phase = "Failed"
        message = f"the run was active for {active_for:.0f} s, past its activeDeadlineSeconds of {deadline}"
        delete(lambda s: s.phase not in TERMINAL)
    elif spec.suspend:
        delete(lambda s: True)
        phase, message = "Suspended", "suspended: pods deleted, config and checkpoints kept"
    else:
        attempt = [s for s in trainers if s.attempt == restarts]
        if started_attempt != restarts and len({s.number for s in attempt if not s.terminating}) == n_trainers:
            started_attempt = restarts
        failed = [s for s in attempt if s.phase == "Failed" and not s.terminating and not s.disrupted]
        gone: list[str] = []  # ranks of a started attempt taken away: evicted, preempted, deleted, lost
        if started_attempt == restarts:
            gone = [f"{s.name} {'evicted or preempted' if s.disrupted else 'deleted'}" for s in attempt
                    if s.phase not in ("Succeeded",) and (s.disrupted or s.terminating)]
            present = {s.number for s in attempt}
            gone += [f"{trainer_pod_name(name, r, restarts)} gone" for r in range(n_trainers) if r not in present]
        fatal = [s for s in failed if s.exit_code in spec.fail_on_exit_codes]
        if fatal:
            phase = "Failed"
            message = (f"trainer pod {fatal[0].name} failed ({fatal[0].reason}), an exit code in failOnExitCodes: "
                       "no gang restart")
            delete(lambda s: s.phase not in TERMINAL)
        elif failed and restarts - disruptions >= spec.backoff_limit:
            first = failed[0]
            phase = "Failed"
            message = (f"trainer pod {first.name} failed ({first.reason or 'no reason given'}) with the backoff limit "
                       f"of {spec.backoff_limit} gang restarts reached")
            delete(lambda s: s.phase not in TERMINAL)
        else:
            if failed:
                first = failed[0]
                restarts += 1
                p.events.append(Event("Warning", "GangRestart",
                                      f"trainer pod {first.name} failed ({first.reason or 'no reason given'}): restarting "
                                      f"the trainer gang from the last checkpoint (restart {restarts - disruptions} of "
                                      f"{spec.backoff_limit})"))
            elif gone:
                restarts += 1
                disruptions += 1  # not the run's fault: not counted against backoffLimit
                p.events.append(Event("Warning", "GangRestart",
                                      f"trainer pod {', '.join(gone)}: a disruption, restarting the trainer gang from the "
                                      "last checkpoint (not counted against backoffLimit)"))
            delete(lambda s: s.role == ROLE_TRAINER and s.attempt != restarts)
            current = [s for s in trainers if s.attempt == restarts and not s.terminating]
            if len(current) == n_trainers and all(s.phase == "Succeeded" for s in current):
                phase, message = "Succeeded", f"finished: {n_trainers} trainer pods completed"
                delete(lambda s: s.role != ROLE_TRAINER)
            else:
                # a new attempt starts once no process of an older one runs (each rank's host name
                # must lead to one pod only); terminal pods may stay, Kueue holds them until then
                older = [s for s in states if s.role == ROLE_TRAINER and s.attempt != restarts
                         and s.phase not in TERMINAL and not _lost(s, now)]
                if not older:
                    p.create += [(ROLE_TRAINER, r) for r in range(n_trainers)
                                 if trainer_pod_name(name, r, restarts) not in taken]
                # the head and rollout pods restart themselves (restartPolicy Always); replace any that ended
                delete(lambda s: s.role in (ROLE_RAY_HEAD, ROLE_ROLLOUT) and s.phase in TERMINAL)
                delete(lambda s: s.role == ROLE_ROLLOUT and s.number >= n_rollouts)
                # a deleted pod's name is free once it is gone: the next plan creates its successor
                if ray_head_name(name) not in taken:
                    p.create.append((ROLE_RAY_HEAD, 0))
                p.create += [(ROLE_ROLLOUT, i) for i in range(n_rollouts) if rollout_pod_name(name, i) not in taken]
                phase, message = _active_phase(current, n_trainers, live, restarts)
                held = next(((s, s.held) for s in live if s.held and (s.role != ROLE_TRAINER or s.attempt == restarts)),
                            None)
                if held:
                    pod_state, (why, detail) = held
                    stalled = (why, f"pod {pod_state.name}: {why}: {detail}")
                    message = f"{message}; {stalled[1]}"
                startup = spec.startup_deadline_seconds
                if startup is not None and phase in ("Pending", "Initializing"):
                    waited = _seconds_since(_waiting_since(status), now)
                    if waited >= startup:
                        phase = "Failed"
                        message = f"the pods did not all start within startupDeadlineSeconds ({startup}): {message}"
                        p.create = []
                        delete(lambda s: s.phase not in TERMINAL)
                    else:
                        p.requeue_after = min(p.requeue_after or startup - waited, startup - waited)

    others = list(earlier) + [f"pod {s.name}" for s in foreign]
    if others and phase not in TERMINAL and not spec.suspend:
        p.create = []
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        stalled = ("EarlierRunTerminating",
                   f"waiting for objects of another run named {name} to go (an earlier run still being deleted, or "
                   f"made by hand: delete any that stay): {shown}")
        message = stalled[1] if phase == "Pending" and not states else f"{message}; {stalled[1]}"
        # the garbage collector's deletions of non-pods send no event: look again soon
        p.requeue_after = min(p.requeue_after or EARLIER_RUN_POLL_SECONDS, EARLIER_RUN_POLL_SECONDS)

    # a deleted pod no kubelet confirms (its node is lost) still holds its name, its host name and
    # its address in the trainer Service's DNS (which publishes pods not ready): the deletion is
    # finished for it, as for a pod on a node marked out of service, once it is LOST_AFTER_SECONDS
    # past its grace period; until then a timer looks again (no event will say so)
    unconfirmed = [s for s in every if s.deletion_due and s.phase not in TERMINAL]
    p.force_delete = [s.name for s in unconfirmed if _lost(s, now)]
    waiting_for = [LOST_AFTER_SECONDS - _seconds_since(s.deletion_due, now) for s in unconfirmed if not _lost(s, now)]
    if waiting_for:
        due = max(min(waiting_for), 1.0)
        p.requeue_after = due if p.requeue_after is None else min(p.requeue_after, due)

    finished = phase in TERMINAL
    if deadline is not None and not finished:
        due = max(deadline - active_for, 0.0)
        p.requeue_after = due if p.requeue_after is None else min(p.requeue_after, due)
    if finished:
        p.requeue_after = None
    p.ends_group = finished or phase == "Suspended"
    trainer_ready = sum(1 for s in live if s.role == ROLE_TRAINER and s.attempt == restarts and s.phase == "Running" and s.ready)
    rollout_ready = sum(1 for s in live if s.role == ROLE_ROLLOUT and s.phase == "Running" and s.ready)
    p.status = {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "restarts": restarts,
        "disruptions": disruptions,
        "startedAttempt": started_attempt,
        "resumes": resumes,
        "trainer": {"desired": n_trainers, "ready": trainer_ready},
        "rollout": {"desired": n_rollouts, "ready": rollout_ready, "selector": rollout_selector(name)},
        "conditions": conditions(status.get("conditions") or [], phase, message, generation, now, stalled),
        "startTime": status.get("startTime") or stamp(now),
        # rounded up: the TTL below is counted from it and must never end before ttl seconds have passed
        "completionTime": status.get("completionTime") or (stamp(now, up=True) if finished else None),
        "compute": gpu_time(status.get("compute"), [pod for pod, s in zip(pods, every, strict=True) if s.owner == uid],
                            now, spec.cost),
    }
    ttl = spec.ttl_seconds_after_finished
    if finished and ttl is not None:  # the run's one timer: nothing else is pending once it has finished
        due = ttl - _seconds_since(p.status["completionTime"], now)
        if due <= 0:
            p.delete_run = True
        else:
            p.requeue_after = due
    if phase != old_phase:
        kind = "Warning" if phase == "Failed" else "Normal"
        p.events.append(Event(kind, phase, message or phase))
    was = next((c for c in status.get("conditions") or [] if c.get("type") == "Stalled"), {})
    if stalled and (was.get("status") != "True" or was.get("reason") != stalled[0]):
        p.events.append(Event("Warning", stalled[0], stalled[1]))  # once per new reason, not per pass
    return p


def _lost(s: PodState, now: datetime) -> bool:
    """Deleted, and unconfirmed LOST_AFTER_SECONDS after its grace period: on a node that is gone."""
    return s.deletion_due is not None and _seconds_since(s.deletion_due, now) >= LOST_AFTER_SECONDS


def _active_phase(current: list[PodState], n_trainers: int, live: list[PodState], restarts: int) -> tuple[str, str]:
    running = [s for s in current if s.phase in ("Running", "Succeeded")]  # a rank may finish before the others
    if len(running) == n_trainers:
        return "Running", f"training: {n_trainers} trainer pods running"
    if any(s.scheduled for s in live if s.role != ROLE_TRAINER or s.attempt == restarts):
        waiting = n_trainers - len(running)
        return "Initializing", f"{len(running)}/{n_trainers} trainer pods running, {waiting} starting"
    gates = sorted({g for s in live for g in s.gated})
    if gates:
        return "Pending", f"waiting for admission: {len([s for s in live if s.gated])} pods held by {', '.join(gates)}"
    return "Pending", "waiting for the pods to be scheduled"


CONDITIONS = {
    "Ready": lambda phase: phase == "Running",
    "Progressing": lambda phase: phase in ACTIVE,
    "Suspended": lambda phase: phase == "Suspended",
    "Succeeded": lambda phase: phase == "Succeeded",
    "Failed": lambda phase: phase == "Failed",
}


def conditions(old: list[dict[str, Any]], phase: str, message: str, generation: int | None,
               now: datetime, stalled: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The standard conditions for `phase`, and `Stalled` (True, with the pod's reason, while a pod
    holds the run back); a condition keeps its lastTransitionTime until its status flips."""
    before = {c.get("type"): c for c in old}
    out = []
    values = [(kind, "True" if holds(phase) else "False", phase, message) for kind, holds in CONDITIONS.items()]
    values.append(("Stalled", "True", *stalled) if stalled else ("Stalled", "False", "NotStalled", ""))
    for kind, value, reason, text in values:
        prev = before.get(kind) or {}
        since = prev.get("lastTransitionTime") if prev.get("status") == value else None
        out.append({"type": kind, "status": value, "reason": reason, "message": text,
                    "lastTransitionTime": since or stamp(now), "observedGeneration": generation})
    return out


def _waiting_since(status: dict[str, Any]) -> str | None:
    """Since when the run's pods have been starting, by the stored conditions: the later of Ready
    turning False (a gang restart) and Progressing turning True (the start, a resume). None when
    the waiting starts with this pass: a new run, a running one, a suspended one resuming."""
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    if (conds.get("Ready") or {}).get("status") == "True" or (conds.get("Progressing") or {}).get("status") != "True":
        return None
    times = [(conds.get(kind) or {}).get("lastTransitionTime") for kind in ("Ready", "Progressing")]
    return max((t for t in times if t), default=None)


# A running pod's GPU time is counted to the last whole minute: the status then changes at most once
# a minute, so its write, which the run's watch sees, does not start the next pass straight away.
GPU_TIME_GRAIN_SECONDS = 60


def gpu_time(previous: dict[str, Any] | None, pods: list[dict[str, Any]], now: datetime,
             cost: api.CostSpec) -> dict[str, Any]:
    """status.compute: the GPU-seconds every pod the run has had held, and their cost.

    A pod holds its GPUs (the nvidia.com/gpu it asks for) from its start (status.startTime, when
    the kubelet took it) to its end (its last container's finishedAt) or, while it runs, now.
    `pods` holds the seconds of each pod still there, by uid; a pod gone since adds its last count
    to `closed`, so a restarted gang, a suspension or a lost pod loses nothing already counted."""
    previous = previous or {}
    before: dict[str, float] = previous.get("pods") or {}
    grain = now - timedelta(seconds=now.timestamp() % GPU_TIME_GRAIN_SECONDS)
    current = {}
    for pod in pods:
        gpus, start = _gpus(pod), (pod.get("status") or {}).get("startTime")
        if gpus and start:
            key = pod["metadata"].get("uid") or pod["metadata"]["name"]
            end = _finished(pod)
            if end is None and (pod.get("status") or {}).get("phase") in TERMINAL:
                # ended with no container's end time (the kubelet refused it at admission, say): it
                # holds nothing now, so its count stops where it was
                current[key] = before.get(key, 0.0)
                continue
            seconds = gpus * max(0.0, ((end or grain) - _time(start)).total_seconds())
            current[key] = max(round(seconds, 3), before.get(key, 0.0))  # a count never goes back
    closed = float(previous.get("closed") or 0.0) + sum(v for k, v in before.items() if k not in current)
    total = closed + sum(current.values())
    priced = total / 3600 * cost.price_per_gpu_hour
    if previous.get("currency") == cost.currency and "cost" in previous:
        # the seconds since the last count at today's price: a price edited while suspended prices
        # what follows, not what was already spent (and the cost counter never goes down)
        added = max(total - float(previous.get("gpuSeconds") or 0.0), 0.0)
        priced = float(previous["cost"]) + added / 3600 * cost.price_per_gpu_hour
    return {"gpuSeconds": round(total, 3), "cost": round(priced, 6),
            "currency": cost.currency, "closed": round(closed, 3), "pods": current}


def _gpus(pod: dict[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        resources = c.get("resources") or {}
        total += int((resources.get("limits") or {}).get(GPU_RESOURCE) or (resources.get("requests") or {}).get(GPU_RESOURCE)
                     or 0)
    return total


def _finished(pod: dict[str, Any]) -> datetime | None:
    """When a pod that ended ended: its last container's finishedAt."""
    status = pod.get("status") or {}
    if status.get("phase") not in TERMINAL:
        return None
    ends = [_time(t["finishedAt"]) for cs in status.get("containerStatuses") or []
            if (t := (cs.get("state") or {}).get("terminated")) and t.get("finishedAt")]
    return max(ends, default=None)


def _time(when: str | datetime) -> datetime:
    """A pod's time as the API server writes it (RFC 3339, UTC), or as the typed client gives it."""
    return when if isinstance(when, datetime) else datetime.fromisoformat(when)


def _seconds_since(when: str | None, now: datetime) -> float:
    """Seconds from an RFC 3339 time (`stamp`'s form, or the client's isoformat) to `now`; 0 when there
    is none yet."""
    if not when:
        return 0.0
    return (now - _time(when).replace(tzinfo=now.tzinfo)).total_seconds()


def stamp(t: datetime, up: bool = False) -> str:
    """A status or Event time as the API writes it (RFC 3339, seconds, UTC): the second is cut off, or
    with `up` rounded up to the next whole one."""
    if up and t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
