"""The operator's decisions, from a run and its pods, without a cluster (operator/plan.py)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import minimal_manifest
from zeroth import api, validation
from zeroth.operator import plan as planning

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)
RUN = "demo"
UID = "6a1c3e0f-5b7d-4c2a-9e8f-0d1b2c3a4e5f"


def spec(trainers: int = 2, rollouts: int = 2, backoff: int = 3, suspend: bool = False):
    m = minimal_manifest(RUN)
    m["spec"]["trainer"] = {"replicas": trainers, "gpusPerReplica": 0}
    m["spec"]["rollout"] = {"replicas": rollouts, "gpusPerReplica": 0, "engine": "hf"}
    m["spec"]["backoffLimit"] = backoff
    m["spec"]["suspend"] = suspend
    return validation.validate(m).spec


def pod(name: str, role: str, number: int = 0, attempt: int = 0, phase: str = "Running", node: str | None = "cpu-0",
        ready: bool | None = None, terminating: bool = False, exit_code: int | None = None) -> dict:
    labels = {"zeroth.dev/run": RUN, "zeroth.dev/role": role}
    if role == "trainer":
        labels |= {"zeroth.dev/rank": str(number), "zeroth.dev/attempt": str(attempt)}
    elif role == "rollout":
        labels["zeroth.dev/index"] = str(number)
    ready = phase == "Running" if ready is None else ready
    status: dict = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": role, "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}]
    meta: dict = {"name": name, "labels": labels,
                  "ownerReferences": [{"kind": "ReasoningRun", "name": RUN, "uid": UID, "controller": True}]}
    if terminating:
        meta["deletionTimestamp"] = "2026-11-24T12:00:30Z"
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def gang(attempt: int = 0, trainers: int = 2, rollouts: int = 2, phase: str = "Running", node: str | None = "cpu-0") -> list[dict]:
    pods = [pod(f"{RUN}-trainer-{r}", "trainer", r, attempt, phase, node) for r in range(trainers)]
    pods.append(pod(f"{RUN}-ray-head", "ray-head", phase=phase if phase != "Succeeded" else "Running", node=node))
    pods += [pod(f"{RUN}-rollout-{i}", "rollout", i, phase=phase if phase != "Succeeded" else "Running", node=node)
             for i in range(rollouts)]
    return pods


def test_a_new_run_creates_its_gang_head_and_fleet_and_is_pending():
    p = planning.plan(RUN, UID, spec(), None, 1, [], NOW)
    assert sorted(p.create) == [("ray-head", 0), ("rollout", 0), ("rollout", 1), ("trainer", 0), ("trainer", 1)]
    assert p.delete == [] and p.status["restarts"] == 0
    s = p.status
    assert s["phase"] == "Pending" and s["restarts"] == 0 and s["observedGeneration"] == 1
    assert s["trainer"] == {"desired": 2, "ready": 0}
    assert s["rollout"] == {"desired": 2, "ready": 0, "selector": "zeroth.dev/run=demo,zeroth.dev/role=rollout"}
    assert s["startTime"] == "2026-11-24T12:00:00Z" and s["completionTime"] is None
    conds = {c["type"]: c["status"] for c in s["conditions"]}
    assert conds == {"Ready": "False", "Progressing": "True", "Suspended": "False", "Succeeded": "False", "Failed": "False",
                     "Stalled": "False"}


def test_pods_held_by_kueue_admission_gate_say_so_in_the_pending_message():
    gated = gang(phase="Pending", node=None)
    for q in gated:
        q["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    p = planning.plan(RUN, UID, spec(), {"phase": "Pending"}, 1, gated, NOW)
    assert p.status["phase"] == "Pending"
    assert p.status["message"] == "waiting for admission: 5 pods held by kueue.x-k8s.io/admission"
    for q in gated:  # admitted: the gates are gone, the scheduler has not bound them yet
        del q["spec"]["schedulingGates"]
    p = planning.plan(RUN, UID, spec(), {"phase": "Pending"}, 1, gated, NOW)
    assert p.status["message"] == "waiting for the pods to be scheduled"


HELD = {  # what the scheduler or the kubelet writes in a held pod's status, and the reason the run shows
    "Unschedulable": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                          "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."}]},
    "ErrImagePull": {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {
        "reason": "ErrImagePull", "message": "failed to pull image \"nowhere.invalid/zeroth:1\": no such host"}}}]},
    "CreateContainerConfigError": {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": "secret \"hf-token\" not found"}}}]},
    "OOMKilled": {"phase": "Running", "containerStatuses": [{"name": "trainer", "restartCount": 3,
                                                            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                                            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]},
}


@pytest.mark.parametrize("why", list(HELD))
def test_a_pod_held_back_shows_its_reason_in_the_message_a_condition_and_one_event(why):
    pods = gang(phase="Pending", node="cpu-0")
    pods[1]["status"] = copy.deepcopy(HELD[why])  # trainer rank 1
    if why == "Unschedulable":
        del pods[1]["spec"]["nodeName"]
    p = planning.plan(RUN, UID, spec(), {"phase": "Initializing"}, 1, pods, NOW)
    assert p.status["phase"] in ("Pending", "Initializing")
    assert f"pod {RUN}-trainer-1: {why}: " in p.status["message"], p.status["message"]
    if why != "OOMKilled":  # the scheduler's or kubelet's own words
        detail = (HELD[why].get("conditions") or [{}])[0].get("message") or HELD[why]["containerStatuses"][0]["state"]["waiting"]["message"]
        assert detail in p.status["message"]
    stalled = next(c for c in p.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == why and RUN + "-trainer-1" in stalled["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Warning", why)]
    # the next pass, with the condition stored, posts no second event; once the pod runs it clears
    again = planning.plan(RUN, UID, spec(), p.status, 1, pods, NOW)
    assert again.events == []
    cleared = planning.plan(RUN, UID, spec(), p.status, 1, gang(), NOW).status
    assert next(c for c in cleared["conditions"] if c["type"] == "Stalled")["status"] == "False"
    assert why not in cleared["message"]


def test_a_pod_that_is_merely_starting_holds_nothing_back():
    pods = gang(phase="Pending", node="cpu-0")
    pods[1]["status"] = {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {
        "reason": "ContainerCreating"}}}]}
    p = planning.plan(RUN, UID, spec(), {"phase": "Initializing"}, 1, pods, NOW)
    assert next(c for c in p.status["conditions"] if c["type"] == "Stalled")["status"] == "False"
    assert p.events == [] or all(e.type == "Normal" for e in p.events)


def test_pending_then_initializing_then_running_with_events():
    unscheduled = gang(phase="Pending", node=None)
    p = planning.plan(RUN, UID, spec(), {"phase": "Pending"}, 1, unscheduled, NOW)
    assert p.status["phase"] == "Pending" and p.create == [] and p.events == []

    some = copy.deepcopy(unscheduled)
    some[0]["spec"]["nodeName"] = "cpu-1"
    some[0]["status"]["phase"] = "Running"
    p = planning.plan(RUN, UID, spec(), {"phase": "Pending"}, 1, some, NOW)
    assert p.status["phase"] == "Initializing"
    assert p.status["message"] == "1/2 trainer pods running, 1 starting"
    assert [(e.type, e.reason) for e in p.events] == [("Normal", "Initializing")]

    p = planning.plan(RUN, UID, spec(), {"phase": "Initializing"}, 1, gang(), NOW)
    assert p.status["phase"] == "Running"
    assert p.status["trainer"]["ready"] == 2 and p.status["rollout"]["ready"] == 2
    assert {c["type"]: c["status"] for c in p.status["conditions"]}["Ready"] == "True"
    assert [(e.type, e.reason) for e in p.events] == [("Normal", "Running")]


def test_a_condition_keeps_its_transition_time_until_it_flips():
    first = planning.plan(RUN, UID, spec(), {"phase": "Initializing"}, 1, gang(), NOW).status
    later = NOW + timedelta(minutes=5)
    again = planning.plan(RUN, UID, spec(), first, 2, gang(), later).status
    by_type = {c["type"]: c for c in again["conditions"]}
    assert by_type["Ready"]["lastTransitionTime"] == "2026-11-24T12:00:00Z"
    assert by_type["Ready"]["observedGeneration"] == 2
    suspended = planning.plan(RUN, UID, spec(suspend=True), again, 3, gang(), later).status
    by_type = {c["type"]: c for c in suspended["conditions"]}
    assert by_type["Ready"] == {**by_type["Ready"], "status": "False", "lastTransitionTime": "2026-11-24T12:05:00Z"}
    assert by_type["Suspended"]["status"] == "True"


def test_one_failed_trainer_restarts_the_whole_gang_counting_first():
    pods = gang()
    pods[1] = pod(f"{RUN}-trainer-1", "trainer", 1, 0, "Failed", exit_code=137)
    p = planning.plan(RUN, UID, spec(), {"phase": "Running", "restarts": 0}, 1, pods, NOW)
    assert p.status["restarts"] == 1
    assert sorted(p.delete) == [f"{RUN}-trainer-0", f"{RUN}-trainer-1"]  # the whole gang, not the fleet
    assert not any(role == "trainer" for role, _ in p.create)  # rank 0 of the old attempt still runs
    assert [(e.type, e.reason) for e in p.events][0] == ("Warning", "GangRestart")
    assert "demo-trainer-1 failed (exit code 137 (Error))" in p.events[0].message
    assert "restart 1 of 3" in p.events[0].message


def test_after_a_restart_old_pods_are_deleted_and_new_ones_created_once_the_old_have_ended():
    status = {"phase": "Running", "restarts": 1}
    # the operator died after writing restarts=1 but before deleting: the next plan deletes, without counting again
    stale = gang(attempt=0)
    p = planning.plan(RUN, UID, spec(), status, 1, stale, NOW)
    assert p.status["restarts"] == 1
    assert sorted(p.delete) == [f"{RUN}-trainer-0", f"{RUN}-trainer-1"]
    # still terminating, their processes still running: nothing created, nothing deleted twice
    terminating = [pod(f"{RUN}-trainer-{r}", "trainer", r, 0, terminating=True) for r in range(2)] + gang()[2:]
    p = planning.plan(RUN, UID, spec(), status, 1, terminating, NOW)
    assert p.delete == [] and p.create == []
    # ended but kept (a finalizer: Kueue's, until the replacements exist): the new attempt's pods,
    # under names of their own
    ended = [pod(f"{RUN}-trainer-{r}", "trainer", r, 0, "Failed", terminating=True) for r in range(2)] + gang()[2:]
    p = planning.plan(RUN, UID, spec(), status, 1, ended, NOW)
    assert sorted(p.create) == [("trainer", 0), ("trainer", 1)] and p.status["restarts"] == 1 and p.delete == []
    # gone: the same
    p = planning.plan(RUN, UID, spec(), status, 1, gang()[2:], NOW)
    assert sorted(p.create) == [("trainer", 0), ("trainer", 1)] and p.status["restarts"] == 1
    assert p.status["phase"] == "Initializing"
    # created: nothing more to do
    now = [pod(f"{RUN}-trainer-{r}-1", "trainer", r, 1, "Pending", node=None) for r in range(2)] + gang()[2:]
    p = planning.plan(RUN, UID, spec(), status, 1, now, NOW)
    assert p.create == [] and p.delete == []


def test_backoff_limit_reached_fails_the_run_and_frees_everything():
    pods = gang(attempt=2)
    pods[0] = pod(f"{RUN}-trainer-0", "trainer", 0, 2, "Failed", exit_code=1)
    p = planning.plan(RUN, UID, spec(backoff=2), {"phase": "Running", "restarts": 2}, 1, pods, NOW)
    assert p.status["phase"] == "Failed" and p.status["restarts"] == 2
    assert "backoff limit of 2 gang restarts reached" in p.status["message"]
    assert "demo-trainer-0 failed (exit code 1 (Error))" in p.status["message"]
    assert sorted(p.delete) == sorted([f"{RUN}-trainer-1", f"{RUN}-ray-head", f"{RUN}-rollout-0", f"{RUN}-rollout-1"])
    assert p.create == []
    assert p.status["completionTime"] == "2026-11-24T12:00:00Z"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "Failed")]
    # and stays Failed: a later plan creates nothing
    later = planning.plan(RUN, UID, spec(backoff=2), p.status, 1, [pods[0]], NOW + timedelta(minutes=1))
    assert later.create == [] and later.status["phase"] == "Failed" and later.events == []
    assert later.status["completionTime"] == "2026-11-24T12:00:00Z"


def test_backoff_limit_zero_fails_on_the_first_failure():
    pods = gang()
    pods[0] = pod(f"{RUN}-trainer-0", "trainer", 0, 0, "Failed", exit_code=2)
    p = planning.plan(RUN, UID, spec(backoff=0), {"phase": "Running"}, 1, pods, NOW)
    assert p.status["phase"] == "Failed" and p.status["restarts"] == 0


def test_suspend_deletes_every_pod_and_resume_recreates_them():
    p = planning.plan(RUN, UID, spec(suspend=True), {"phase": "Running", "restarts": 1}, 2, gang(attempt=1), NOW)
    assert p.status["phase"] == "Suspended" and p.create == []
    assert len(p.delete) == 5 and p.ends_group  # for good: a queued run's Kueue group ends here
    assert {c["type"]: c["status"] for c in p.status["conditions"]}["Suspended"] == "True"
    assert p.status["resumes"] == 0
    p = planning.plan(RUN, UID, spec(), p.status, 3, [], NOW)
    assert p.status["phase"] == "Pending" and p.status["restarts"] == 1
    assert sorted(p.create) == [("ray-head", 0), ("rollout", 0), ("rollout", 1), ("trainer", 0), ("trainer", 1)]
    assert [(e.type, e.reason) for e in p.events] == [("Normal", "Pending")]
    assert p.status["resumes"] == 1 and not p.ends_group
    # counted once: the next plan (the status written, pods not created yet) keeps the number
    p = planning.plan(RUN, UID, spec(), p.status, 3, [], NOW)
    assert p.status["resumes"] == 1 and len(p.create) == 5


def test_a_gang_restart_replaces_pods_within_the_group_and_a_finished_run_ends_it():
    pods = gang()
    pods[0]["status"]["phase"] = "Failed"
    p = planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, pods, NOW)
    assert p.status["restarts"] == 1 and p.delete and not p.ends_group
    p = planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, gang(phase="Succeeded"), NOW)
    assert p.status["phase"] == "Succeeded" and p.ends_group
    assert sorted(p.delete) == ["demo-ray-head", "demo-rollout-0", "demo-rollout-1"]


@pytest.mark.parametrize(("before", "after", "create", "delete"), [
    (2, 4, [("rollout", 2), ("rollout", 3)], []),
    (3, 1, [], ["demo-rollout-1", "demo-rollout-2"]),
])
def test_scaling_the_fleet_creates_or_deletes_rollout_pods_only(before, after, create, delete):
    p = planning.plan(RUN, UID, spec(rollouts=after), {"phase": "Running"}, 2, gang(rollouts=before), NOW)
    assert p.create == create and sorted(p.delete) == delete
    assert p.status["rollout"]["desired"] == after and p.status["phase"] == "Running"


def test_a_rollout_or_head_pod_that_ended_is_replaced():
    pods = gang()
    pods[2] = pod(f"{RUN}-ray-head", "ray-head", phase="Failed")
    pods[3] = pod(f"{RUN}-rollout-0", "rollout", 0, phase="Failed")
    p = planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, pods, NOW)
    assert sorted(p.delete) == [f"{RUN}-ray-head", f"{RUN}-rollout-0"] and p.status["restarts"] == 0
    p = planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, [pods[i] for i in (0, 1, 4)], NOW)
    assert sorted(p.create) == [("ray-head", 0), ("rollout", 0)]


def test_all_trainers_succeeded_finishes_the_run_and_frees_the_fleet():
    pods = gang(phase="Succeeded")
    p = planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, pods, NOW)
    assert p.status["phase"] == "Succeeded" and p.create == []
    assert sorted(p.delete) == sorted([f"{RUN}-ray-head", f"{RUN}-rollout-0", f"{RUN}-rollout-1"])
    assert p.status["completionTime"] == "2026-11-24T12:00:00Z"
    assert {c["type"]: c["status"] for c in p.status["conditions"]}["Succeeded"] == "True"
    # one trainer done and one still running is not success
    pods[1]["status"]["phase"] = "Running"
    assert planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, pods, NOW).status["phase"] == "Running"


def test_a_finished_run_never_creates_and_removes_what_still_runs():
    pods = gang(phase="Succeeded")
    p = planning.plan(RUN, UID, spec(), {"phase": "Succeeded", "completionTime": "2026-11-24T11:00:00Z"}, 1, pods, NOW)
    assert p.create == [] and p.events == []
    assert sorted(p.delete) == sorted([f"{RUN}-ray-head", f"{RUN}-rollout-0", f"{RUN}-rollout-1"])
    assert p.status["completionTime"] == "2026-11-24T11:00:00Z"


def test_a_plan_is_a_fixed_point_once_carried_out():
    """Carrying out a plan and planning again changes nothing: the idempotence the chaos test relies on."""
    p = planning.plan(RUN, UID, spec(), None, 1, gang(), NOW)
    again = planning.plan(RUN, UID, spec(), p.status, 1, gang(), NOW + timedelta(seconds=30))
    assert again.create == [] and again.delete == [] and again.events == []
    assert again.status == p.status


def test_an_active_deadline_fails_the_run_and_frees_everything_once_it_falls_due():
    m = minimal_manifest(RUN)
    m["spec"].update(trainer={"replicas": 2, "gpusPerReplica": 0}, rollout={"replicas": 2, "gpusPerReplica": 0, "engine": "hf"},
                     activeDeadlineSeconds=600)
    bounded = validation.validate(m).spec
    started = {"phase": "Running", "startTime": "2026-11-24T11:55:00Z"}  # 300 s before NOW
    p = planning.plan(RUN, UID, bounded, started, 1, gang(), NOW)
    assert p.status["phase"] == "Running" and p.delete == []
    assert p.requeue_after == pytest.approx(300)  # planned again when it falls due, event or not
    late = planning.plan(RUN, UID, bounded, started, 1, gang(), NOW + timedelta(seconds=300))
    assert late.status["phase"] == "Failed" and "activeDeadlineSeconds of 600" in late.status["message"]
    assert sorted(late.delete) == sorted(q["metadata"]["name"] for q in gang())
    assert late.status["completionTime"] and ("Warning", "Failed") in [(e.type, e.reason) for e in late.events]
    assert late.requeue_after is None
    assert planning.plan(RUN, UID, spec(), started, 1, gang(), NOW + timedelta(days=30)).status["phase"] == "Running"  # no deadline


def test_a_startup_deadline_fails_a_run_whose_pods_never_start_saying_what_held_them():
    m = minimal_manifest(RUN)
    m["spec"].update(trainer={"replicas": 2, "gpusPerReplica": 0}, rollout={"replicas": 2, "gpusPerReplica": 0, "engine": "hf"},
                     startupDeadlineSeconds=120)
    bounded = validation.validate(m).spec
    pods = gang(phase="Pending", node="cpu-0")
    pods[1]["status"] = copy.deepcopy(HELD["ErrImagePull"])
    first = planning.plan(RUN, UID, bounded, None, 1, pods, NOW)  # the run's first pass: starting since now
    assert first.status["phase"] != "Failed" and first.requeue_after == pytest.approx(120)
    soon = planning.plan(RUN, UID, bounded, first.status, 1, pods, NOW + timedelta(seconds=60))
    assert soon.status["phase"] != "Failed" and soon.requeue_after == pytest.approx(60)
    late = planning.plan(RUN, UID, bounded, soon.status, 1, pods, NOW + timedelta(seconds=121))
    assert late.status["phase"] == "Failed" and late.create == [] and late.requeue_after is None
    assert "did not all start within startupDeadlineSeconds (120)" in late.status["message"]
    assert f"pod {RUN}-trainer-1: ErrImagePull" in late.status["message"]  # what held them
    assert sorted(late.delete) == sorted(q["metadata"]["name"] for q in pods)

    # running, then a gang restart: the clock starts again when Ready turns False
    running = planning.plan(RUN, UID, bounded, first.status, 1, gang(), NOW + timedelta(seconds=60)).status
    assert running["phase"] == "Running"
    restarting = planning.plan(RUN, UID, bounded, running, 1, pods, NOW + timedelta(seconds=600))
    assert restarting.status["phase"] != "Failed" and restarting.requeue_after == pytest.approx(120)

    # suspended, then resumed: the clock starts again with the resume
    suspended = planning.plan(RUN, UID, bounded.model_copy(update={"suspend": True}), restarting.status, 1, pods,
                              NOW + timedelta(seconds=700)).status
    assert suspended["phase"] == "Suspended"
    resumed = planning.plan(RUN, UID, bounded, suspended, 1, [], NOW + timedelta(seconds=5000))
    assert resumed.status["phase"] == "Pending" and resumed.requeue_after == pytest.approx(120)


def _started(status: dict) -> dict:
    """The status after the gang of attempt status["restarts"] was seen whole."""
    return planning.plan(RUN, UID, spec(backoff=0), status, 1, gang(attempt=int(status.get("restarts") or 0)), NOW).status


@pytest.mark.parametrize("how", ["deleted", "evicted", "preempted", "gone"])
def test_a_disrupted_rank_restarts_the_whole_gang_without_counting_against_the_backoff_limit(how):
    running = _started({"phase": "Running"})
    assert running["startedAttempt"] == 0
    pods = gang()
    rank1 = pods[1]
    if how == "deleted":  # kubectl delete pod, a drain: terminating
        rank1["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:30Z"
    elif how == "evicted":  # the Eviction API, or the kubelet under node pressure
        rank1["status"] = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}
    elif how == "preempted":  # the scheduler, or the taint manager for a lost node
        rank1["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"})
        rank1["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:30Z"
    else:  # already removed
        pods.remove(rank1)
    p = planning.plan(RUN, UID, spec(backoff=0), running, 1, pods, NOW)  # backoffLimit 0: a failure would end the run
    assert p.status["phase"] != "Failed"
    assert (p.status["restarts"], p.status["disruptions"]) == (1, 1)
    assert "demo-trainer-0" in p.delete  # the surviving rank goes too: never a lone replacement at the same attempt
    assert [(e.type, e.reason) for e in p.events][0] == ("Warning", "GangRestart")
    assert "not counted against backoffLimit" in p.events[0].message


def test_a_real_failure_after_disruptions_still_meets_the_backoff_limit():
    after = {**_started({"phase": "Running", "restarts": 2, "disruptions": 2})}
    assert after["startedAttempt"] == 2
    pods = gang(attempt=2)
    pods[0]["status"] = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": 1, "reason": "Error"}}}]}
    p = planning.plan(RUN, UID, spec(backoff=0), after, 1, pods, NOW)
    assert p.status["phase"] == "Failed" and "backoff limit of 0" in p.status["message"]


def test_a_gang_not_yet_seen_whole_is_not_restarted_for_a_missing_rank():
    """An operator killed halfway through creating a gang left some ranks uncreated: they are
    created, not taken for a disruption."""
    partial = [q for q in gang() if q["metadata"]["name"] != "demo-trainer-1"]
    p = planning.plan(RUN, UID, spec(), {"phase": "Initializing"}, 1, partial, NOW)
    assert p.status["restarts"] == 0 and ("trainer", 1) in p.create and p.status["startedAttempt"] is None


def test_pods_still_terminating_from_a_suspension_are_no_disruption_of_the_resumed_run():
    running = _started({"phase": "Running"})
    suspended = planning.plan(RUN, UID, spec(suspend=True), running, 1, gang(), NOW).status
    leaving = gang()
    for q in leaving:
        q["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:30Z"
    p = planning.plan(RUN, UID, spec(), suspended, 1, leaving, NOW)
    assert p.status["restarts"] == 0 and p.status["disruptions"] == 0 and p.status["startedAttempt"] is None


def test_an_exit_code_the_spec_lists_fails_the_run_at_once():
    m = minimal_manifest(RUN)
    m["spec"].update(trainer={"replicas": 2, "gpusPerReplica": 0}, rollout={"replicas": 2, "gpusPerReplica": 0, "engine": "hf"},
                     failOnExitCodes=[3], backoffLimit=5)
    strict = validation.validate(m).spec
    running = {"phase": "Running", "restarts": 0}
    for code, phase in ((3, "Failed"), (1, "Running")):
        pods = gang()
        pods[1] = pod(f"{RUN}-trainer-1", "trainer", 1, phase="Failed", exit_code=code)
        p = planning.plan(RUN, UID, strict, running, 1, pods, NOW)
        if phase == "Failed":
            assert p.status["phase"] == "Failed" and p.status["restarts"] == 0
            assert "exit code 3" in p.status["message"] and "failOnExitCodes" in p.status["message"]
        else:  # any other code: the usual gang restart
            assert p.status["restarts"] == 1 and p.status["phase"] != "Failed"


# ------------------------------------------------------------ identity: the run's own pods by uid


def _of_another_run(pods: list[dict], uid: str | None = "1f0e2d3c-0000-4000-8000-00000000beef") -> list[dict]:
    for q in pods:
        q["metadata"]["ownerReferences"] = [{"kind": "ReasoningRun", "name": RUN, "uid": uid, "controller": True}] if uid else []
    return pods


def test_an_earlier_runs_finished_gang_is_never_adopted():
    """Deleted and created again with the same name: the old run's Succeeded trainers (not yet
    collected) must not make the new run Succeeded, nor its pods count as the new run's."""
    old = _of_another_run(gang(phase="Succeeded"))
    p = planning.plan(RUN, UID, spec(), None, 1, old, NOW)
    assert p.status["phase"] == "Pending" and p.create == [] and p.delete == []
    stalled = {c["type"]: c for c in p.status["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "EarlierRunTerminating"
    assert "pod demo-trainer-0" in stalled["message"] and "another run named demo" in p.status["message"]
    assert [e.reason for e in p.events] == ["EarlierRunTerminating"]
    assert p.requeue_after == planning.EARLIER_RUN_POLL_SECONDS
    assert p.status["trainer"]["ready"] == 0 and p.status["rollout"]["ready"] == 0


def test_an_earlier_runs_pods_hold_the_new_gang_until_they_are_gone():
    old = _of_another_run(gang(attempt=2, phase="Running"))  # other names (attempt 2), same host names
    for q in old:
        q["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:30Z"
    waiting = planning.plan(RUN, UID, spec(), None, 1, old, NOW)
    assert waiting.create == [] and waiting.delete == []  # not ours to delete: the garbage collector's
    assert waiting.status["restarts"] == 0 and waiting.status["startedAttempt"] is None
    gone = planning.plan(RUN, UID, spec(), waiting.status, 1, [], NOW)
    assert sorted(gone.create) == [("ray-head", 0), ("rollout", 0), ("rollout", 1), ("trainer", 0), ("trainer", 1)]
    assert {c["type"]: c["status"] for c in gone.status["conditions"]}["Stalled"] == "False"


def test_pods_with_the_runs_labels_and_no_owner_are_not_adopted():
    orphans = _of_another_run([pod(f"{RUN}-trainer-0", "trainer", 0)], uid=None)
    p = planning.plan(RUN, UID, spec(), None, 1, orphans, NOW)
    assert p.create == [] and "delete any that stay" in p.status["message"]


def test_other_children_of_an_earlier_run_hold_the_run_too():
    p = planning.plan(RUN, UID, spec(), None, 1, [], NOW, earlier=("ConfigMap demo-config",))
    assert p.create == [] and p.status["phase"] == "Pending"
    assert p.status["message"].startswith("waiting for objects of another run named demo to go")
    assert p.status["message"].endswith(": ConfigMap demo-config")


# ------------------------------------------------------------------------------ a node that is lost


def _deleted(q: dict, at: datetime) -> dict:
    q["metadata"]["deletionTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")  # the end of its grace period
    q["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"})
    return q


def test_a_new_gang_waits_for_an_old_rank_still_terminating_but_not_for_one_on_a_lost_node():
    """The taint manager evicted rank 1 from a node that stopped answering: the gang restarts. Its
    pod stays (phase Running, deleted), since no kubelet confirms the deletion; the new gang waits
    for it during its grace period and LOST_AFTER_SECONDS more, then no longer."""
    status = {"phase": "Running", "restarts": 0, "startedAttempt": 0}
    pods = gang()
    _deleted(pods[1], NOW + timedelta(seconds=30))
    restart = planning.plan(RUN, UID, spec(), status, 1, pods, NOW)
    assert restart.status["restarts"] == 1 and restart.status["disruptions"] == 1
    assert not [c for c in restart.create if c[0] == "trainer"]  # rank 1 of attempt 0 still in its grace period
    rank0_gone = [q for q in pods if q["metadata"]["name"] != "demo-trainer-0"]
    later = NOW + timedelta(seconds=30 + planning.LOST_AFTER_SECONDS - 1)
    waiting = planning.plan(RUN, UID, spec(), restart.status, 1, rank0_gone, later)
    assert not [c for c in waiting.create if c[0] == "trainer"] and waiting.requeue_after == pytest.approx(1.0)
    assert waiting.force_delete == []
    lost = planning.plan(RUN, UID, spec(), restart.status, 1, rank0_gone, later + timedelta(seconds=1))
    assert sorted(c for c in lost.create if c[0] == "trainer") == [("trainer", 0), ("trainer", 1)]
    assert lost.status["restarts"] == 1  # the lost pod is no new failure
    assert lost.force_delete == ["demo-trainer-1"]  # its name and DNS record go with it


def test_any_pod_lost_with_its_node_is_force_deleted_so_that_its_name_is_free():
    """The Ray head, a rollout pod, or an earlier run's pod: deleted, unconfirmed past the grace
    period and LOST_AFTER_SECONDS; a pod still in its grace period, or one that ended, is not."""
    status = {"phase": "Running", "restarts": 0, "startedAttempt": 0}
    pods = gang()
    _deleted(pods[2], NOW - timedelta(seconds=planning.LOST_AFTER_SECONDS + 1))  # the head
    _deleted(pods[3], NOW - timedelta(seconds=5))  # rollout-0: a normal deletion, still in time
    ended = _deleted(pods[4], NOW - timedelta(seconds=3600))  # rollout-1 ended: its kubelet said so
    ended["status"]["phase"] = "Failed"
    p = planning.plan(RUN, UID, spec(), status, 1, pods, NOW)
    assert p.force_delete == ["demo-ray-head"]
    assert p.requeue_after == pytest.approx(planning.LOST_AFTER_SECONDS - 5)
    foreign = _of_another_run([_deleted(pod("demo-trainer-0", "trainer"), NOW - timedelta(seconds=60))])
    assert planning.plan(RUN, UID, spec(), None, 1, foreign, NOW).force_delete == ["demo-trainer-0"]


def test_isoformat_times_from_the_client_are_read_too():
    status = {"phase": "Running", "restarts": 1, "startedAttempt": 1}
    old = gang()[:2]
    for q in old:
        q["metadata"]["deletionTimestamp"] = (NOW - timedelta(seconds=planning.LOST_AFTER_SECONDS + 5)).isoformat()
    p = planning.plan(RUN, UID, spec(), status, 1, old, NOW)
    assert sorted(c for c in p.create if c[0] == "trainer") == [("trainer", 0), ("trainer", 1)]


def _with_ttl(ttl: int | None, **extra):
    m = minimal_manifest(RUN)
    m["spec"].update(trainer={"replicas": 2, "gpusPerReplica": 0}, rollout={"replicas": 2, "gpusPerReplica": 0, "engine": "hf"},
                     **({"ttlSecondsAfterFinished": ttl} if ttl is not None else {}), **extra)
    return validation.validate(m).spec


def test_a_finished_run_is_deleted_ttl_seconds_after_its_completion_time():
    ttl = _with_ttl(120)
    # the pass that sees the gang succeed: completionTime is now, the deletion due in 120 s
    done = planning.plan(RUN, UID, ttl, {"phase": "Running", "startTime": "2026-11-24T11:00:00Z"}, 1, gang(phase="Succeeded"), NOW)
    assert done.status["phase"] == "Succeeded" and done.status["completionTime"] == "2026-11-24T12:00:00Z"
    assert not done.delete_run and done.requeue_after == pytest.approx(120)
    later = planning.plan(RUN, UID, ttl, done.status, 1, gang(phase="Succeeded"), NOW + timedelta(seconds=90))
    assert not later.delete_run and later.requeue_after == pytest.approx(30)
    due = planning.plan(RUN, UID, ttl, done.status, 1, gang(phase="Succeeded"), NOW + timedelta(seconds=120))
    assert due.delete_run and due.requeue_after is None
    # a failed run too, its time counted from its own completionTime
    failed = {"phase": "Failed", "completionTime": "2026-11-24T11:59:00Z", "startTime": "2026-11-24T11:00:00Z"}
    assert not planning.plan(RUN, UID, ttl, failed, 1, [], NOW).delete_run
    assert planning.plan(RUN, UID, ttl, failed, 1, [], NOW + timedelta(seconds=60)).delete_run
    assert planning.plan(RUN, UID, _with_ttl(0), failed, 1, [], NOW).delete_run  # 0: at once


def test_the_ttl_never_ends_before_ttl_seconds_from_the_finish_however_the_second_is_cut():
    """completionTime holds whole seconds: a finish 0.6 s into a second is stamped with the next one,
    so the deletion, counted from the stamp, comes at least ttl seconds after the finish."""
    ttl = _with_ttl(2)
    finish = NOW + timedelta(seconds=0.6)
    done = planning.plan(RUN, UID, ttl, {"phase": "Running", "startTime": "2026-11-24T11:00:00Z"}, 1, gang(phase="Succeeded"), finish)
    assert done.status["completionTime"] == "2026-11-24T12:00:01Z"
    assert done.requeue_after >= 2
    early = planning.plan(RUN, UID, ttl, done.status, 1, gang(phase="Succeeded"), finish + timedelta(seconds=1.9))
    assert not early.delete_run and early.requeue_after > 0
    assert planning.plan(RUN, UID, ttl, done.status, 1, gang(phase="Succeeded"), finish + timedelta(seconds=2.4)).delete_run


def test_no_ttl_or_an_unfinished_run_is_never_deleted():
    failed = {"phase": "Failed", "completionTime": "2026-11-24T11:59:00Z", "startTime": "2026-11-24T11:00:00Z"}
    kept = planning.plan(RUN, UID, _with_ttl(None), failed, 1, [], NOW + timedelta(days=365))
    assert not kept.delete_run and kept.requeue_after is None
    running = planning.plan(RUN, UID, _with_ttl(0), {"phase": "Running", "startTime": "2026-11-24T11:00:00Z"}, 1, gang(), NOW)
    assert running.status["phase"] == "Running" and not running.delete_run and running.requeue_after is None
    suspended = planning.plan(RUN, UID, _with_ttl(0, suspend=True), {"phase": "Running", "startTime": "2026-11-24T11:00:00Z"}, 1,
                              gang(), NOW)
    assert suspended.status["phase"] == "Suspended" and not suspended.delete_run


def test_the_ttl_timer_replaces_the_deadline_timer_once_the_run_finishes():
    """One pending timer a run: while active it is the active deadline's, once finished the TTL's."""
    both = _with_ttl(30, activeDeadlineSeconds=600)
    started = {"phase": "Running", "startTime": "2026-11-24T11:55:00Z"}  # 300 s before NOW
    assert planning.plan(RUN, UID, both, started, 1, gang(), NOW).requeue_after == pytest.approx(300)
    failed = planning.plan(RUN, UID, both, started, 1, gang(), NOW + timedelta(seconds=300))
    assert failed.status["phase"] == "Failed" and failed.requeue_after == pytest.approx(30) and not failed.delete_run


def test_a_volume_that_cannot_be_mounted_holds_the_run_with_the_kubelets_words():
    pods = gang(phase="Pending")  # scheduled, waiting on the node
    said = 'MountVolume.SetUp failed for volume "keys" : secret "api-keys" not found'
    p = planning.plan(RUN, UID, spec(), {"phase": "Initializing"}, 1, pods, NOW, mount_failures={"demo-trainer-1": said})
    stalled = {c["type"]: c for c in p.status["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "FailedMount")
    assert stalled["message"] == f"pod demo-trainer-1: FailedMount: {said}" and said in p.status["message"]
    assert ("Warning", "FailedMount") in [(e.type, e.reason) for e in p.events]
    running = planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, gang(), NOW, mount_failures={"demo-trainer-1": said})
    assert {c["type"]: c["status"] for c in running.status["conditions"]}["Stalled"] == "False"  # an old Event: mounted since


def _gpu_pod(name: str, gpus: int, started: datetime | None, finished: datetime | None = None, uid: str | None = None,
             owner: str = UID) -> dict:
    p = pod(name, "trainer", phase="Succeeded" if finished else "Running")
    p["metadata"]["uid"] = uid or f"uid-{name}"
    p["metadata"]["ownerReferences"][0]["uid"] = owner
    if gpus:
        p["spec"]["containers"] = [{"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": str(gpus)},
                                                                     "requests": {"nvidia.com/gpu": str(gpus)}}}]
    if started:
        p["status"]["startTime"] = started.isoformat()
    if finished:
        p["status"]["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": 0, "startedAt": started.isoformat(), "finishedAt": finished.isoformat()}}}]
    return p


def test_gpu_time_counts_each_pods_gpus_from_its_start_to_its_end_and_keeps_what_gone_pods_held():
    cost = api.CostSpec(price_per_gpu_hour=3.6, currency="EUR")
    pods = [_gpu_pod("a", 2, NOW - timedelta(seconds=100)),  # running: 2 GPUs for 100 s so far
            _gpu_pod("b", 1, NOW - timedelta(seconds=100), finished=NOW - timedelta(seconds=40)),  # ended: 60 s
            _gpu_pod("c", 0, NOW - timedelta(seconds=100)),  # a CPU pod holds no GPU
            _gpu_pod("d", 4, None)]  # not started yet
    first = planning.gpu_time(None, pods, NOW, cost)
    assert first["pods"] == {"uid-a": 200.0, "uid-b": 60.0}
    assert (first["gpuSeconds"], first["closed"], first["currency"]) == (260.0, 0.0, "EUR")
    assert first["cost"] == pytest.approx(260 / 3600 * 3.6)
    # within the same minute a running pod's count stands still (no status write, no new pass)
    assert planning.gpu_time(first, pods, NOW + timedelta(seconds=30), cost) == first
    # a minute on, pod b gone (a restarted gang): what it held stays in the total
    later = planning.gpu_time(first, [pods[0]], NOW + timedelta(seconds=60), cost)
    assert later["pods"] == {"uid-a": 320.0} and later["closed"] == 60.0 and later["gpuSeconds"] == 380.0


def test_a_new_price_prices_the_gpu_time_that_follows_not_what_was_spent():
    """spec.cost may be edited while suspended: the cost counter must not jump, nor fall (which
    Prometheus would read as a reset and count the whole run again)."""
    pods = [_gpu_pod("a", 1, NOW - timedelta(seconds=3600))]
    first = planning.gpu_time(None, pods, NOW, api.CostSpec(price_per_gpu_hour=4.0, currency="EUR"))
    assert first["cost"] == pytest.approx(4.0)
    cheaper = planning.gpu_time(first, pods, NOW + timedelta(seconds=3600), api.CostSpec(price_per_gpu_hour=1.0, currency="EUR"))
    assert cheaper["gpuSeconds"] == 7200.0 and cheaper["cost"] == pytest.approx(4.0 + 1.0)
    # another currency starts another series: its whole at the new price
    dollars = planning.gpu_time(cheaper, pods, NOW + timedelta(seconds=3600), api.CostSpec(price_per_gpu_hour=2.0, currency="USD"))
    assert dollars["cost"] == pytest.approx(4.0)


def test_a_pod_that_ended_with_no_container_end_time_adds_no_more_gpu_time():
    """A pod the kubelet refused at admission (UnexpectedAdmissionError, OutOf nvidia.com/gpu) is
    Failed with a startTime and no container statuses; a failed run keeps such a pod for its logs and
    is still reconciled, so counting it to `now` would grow the run's cost without end."""
    cost = api.CostSpec(price_per_gpu_hour=3.6, currency="EUR")
    refused = _gpu_pod("r", 2, NOW - timedelta(seconds=300))
    refused["status"]["phase"] = "Failed"
    first = planning.gpu_time(None, [refused], NOW, cost)
    assert first["gpuSeconds"] == 0.0
    assert planning.gpu_time(first, [refused], NOW + timedelta(hours=5), cost)["gpuSeconds"] == 0.0
    # one that ran, was counted, then ended so: its count stops where it was
    running = _gpu_pod("s", 1, NOW - timedelta(seconds=120))
    counted = planning.gpu_time(None, [running], NOW, cost)
    assert counted["gpuSeconds"] == 120.0
    running["status"]["phase"] = "Failed"
    assert planning.gpu_time(counted, [running], NOW + timedelta(hours=5), cost)["gpuSeconds"] == 120.0


def test_the_plan_writes_gpu_time_of_its_own_pods_only():
    mine = _gpu_pod(f"{RUN}-trainer-0", 1, NOW - timedelta(seconds=120))
    theirs = _gpu_pod("other", 8, NOW - timedelta(seconds=120), owner="someone-else")
    p = planning.plan(RUN, UID, spec(), {"phase": "Running"}, 1, [mine, theirs], NOW)
    assert p.status["compute"]["gpuSeconds"] == 120.0 and list(p.status["compute"]["pods"]) == ["uid-" + mine["metadata"]["name"]]
