"""StatusWriter: what it patches, how often, and that a failing API never reaches training."""

from __future__ import annotations

import json

import pytest

from tests.conftest import minimal_manifest
from zeroth import api, validation
from zeroth.rollout.worker import Sample
from zeroth.trainer import status as status_mod
from zeroth.trainer.report import Reporter
from zeroth.trainer.status import StatusWriter


class FakeApi:
    """Records patch calls; raises `fail` while it is set."""

    def __init__(self):
        self.calls: list[tuple[tuple, dict]] = []
        self.fail: Exception | None = None

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.fail is not None:
            raise self.fail
        return {}

    def bodies(self) -> list[dict]:
        return [args[5] for args, _ in self.calls]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake():
    return FakeApi()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def writer(fake, clock):
    return StatusWriter("my-run", "team-a", fake, interval=5.0, clock=clock)


def test_fields_are_the_progress_models(writer):
    assert status_mod.FIELDS == ("step", "maxSteps", "rewardMean", "accuracy", "tokensPerSecond", "lastCheckpointStep",
                                 "weightsVersion")


def test_patch_targets_the_runs_status_with_a_merge_patch_of_progress_only(writer, fake):
    assert writer.update(step=3, maxSteps=10, rewardMean=0.25, tokensPerSecond=123.5, weightsVersion=3)
    (args, kwargs), = fake.calls
    assert args[:5] == (api.GROUP, api.VERSION, "team-a", api.PLURAL, "my-run")
    assert args[5] == {"status": {"progress": {"step": 3, "maxSteps": 10, "rewardMean": 0.25, "tokensPerSecond": 123.5,
                                               "weightsVersion": 3}}}
    assert kwargs["_content_type"] == "application/merge-patch+json"
    assert kwargs["field_manager"] == "zeroth-trainer"
    assert kwargs["_request_timeout"]
    json.dumps(args[5])  # plain JSON, nothing the client would have to serialise specially


def test_none_and_nan_are_left_out(writer, fake):
    # null in a merge patch deletes the field on the server; NaN is not JSON (the server would refuse every patch)
    writer.update(step=1, accuracy=None, rewardMean=float("nan"), tokensPerSecond=float("inf"))
    assert fake.bodies() == [{"status": {"progress": {"step": 1}}}]


def test_unknown_field_is_a_programming_error(writer):
    with pytest.raises(KeyError, match="reward_mean"):
        writer.update(reward_mean=0.5)


def test_at_most_one_patch_per_interval_and_held_values_go_out_with_the_next(writer, fake, clock):
    assert writer.update(step=1)
    for step in range(2, 6):
        clock.now += 1.0
        assert not writer.update(step=step, rewardMean=step / 10)
    assert len(fake.calls) == 1
    clock.now += 1.0  # 5 s after the first patch
    assert writer.update(step=6)
    assert fake.bodies()[-1] == {"status": {"progress": {"step": 6, "rewardMean": 0.5}}}
    clock.now += 4.9
    assert not writer.update(step=7)
    assert len(fake.calls) == 2


def test_force_ignores_the_interval(writer, fake, clock):
    writer.update(step=1)
    clock.now += 0.1
    assert writer.update(force=True, step=2, lastCheckpointStep=2)
    assert fake.bodies()[-1]["status"]["progress"] == {"step": 2, "lastCheckpointStep": 2}
    clock.now += 0.1
    writer.update(step=3)  # the forced patch counts as the last one
    assert len(fake.calls) == 2


def test_flush_sends_what_is_held_and_nothing_when_unchanged(writer, fake, clock):
    writer.update(step=1)
    clock.now += 1
    writer.update(step=2)
    assert writer.flush()
    assert fake.bodies()[-1]["status"]["progress"]["step"] == 2
    clock.now += 60
    assert not writer.flush()  # the server already has it
    assert not writer.update(step=2)
    assert len(fake.calls) == 2


def test_api_error_is_logged_not_raised_and_backs_off(writer, fake, clock, caplog):
    from kubernetes.client.exceptions import ApiException

    fake.fail = ApiException(status=403, reason="Forbidden")
    assert not writer.update(step=1)  # no exception
    assert "HTTP 403 Forbidden" in caplog.text
    assert writer.last_error is fake.fail
    clock.now += 5
    writer.update(step=2)  # 5 s is not enough after a failure: the wait doubled
    assert len(fake.calls) == 1
    clock.now += 5
    writer.update(step=3)
    assert len(fake.calls) == 2
    waits = []
    for step in range(4, 12):
        clock.now += 100
        writer.update(step=step)
        waits.append(writer.wait)
    assert max(waits) == status_mod.MAX_BACKOFF
    fake.fail = None
    clock.now += status_mod.MAX_BACKOFF
    assert writer.update(step=12)
    assert writer.wait == 5.0  # back to normal after a success
    assert fake.bodies()[-1] == {"status": {"progress": {"step": 12}}}


def test_connection_error_is_not_raised(writer, fake):
    fake.fail = ConnectionRefusedError("nothing listens")
    assert not writer.update(force=True, step=1)
    assert isinstance(writer.last_error, ConnectionRefusedError)


def test_default_credentials_are_the_in_cluster_ones():
    from kubernetes.config import incluster_config

    assert str(status_mod.SERVICE_ACCOUNT_DIR / "token") == incluster_config.SERVICE_TOKEN_FILENAME
    assert str(status_mod.SERVICE_ACCOUNT_DIR / "ca.crt") == incluster_config.SERVICE_CERT_FILENAME


@pytest.mark.parametrize("missing", ["ZEROTH_RUN", "ZEROTH_NAMESPACE", "KUBERNETES_SERVICE_HOST"])
def test_inactive_off_a_cluster(missing, tmp_path):
    env = {"ZEROTH_RUN": "r", "ZEROTH_NAMESPACE": "ns", "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    del env[missing]
    assert StatusWriter.from_environment(env, token_dir=tmp_path) is None


def test_missing_credentials_disable_it_without_failing(tmp_path, caplog):
    env = {"ZEROTH_RUN": "r", "ZEROTH_NAMESPACE": "ns", "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    assert StatusWriter.from_environment(env, token_dir=tmp_path / "nowhere") is None
    assert "status.progress will not be written" in caplog.text


def _sample(correct: bool) -> Sample:
    return Sample(task_id="t0", group=0, prompt_ids=[1, 2], completion_ids=[3, 4], logprobs=[-0.1, -0.2],
                  completion="3+4", reward=1.0 if correct else 0.0, scores={"countdown": float(correct)},
                  correct=correct, truncated=False, version=0)


def _record(step: int) -> dict:
    return {"step": step, "weights_version": step, "reward_mean": 0.5, "accuracy": 0.5, "tokens_per_second": 42.0,
            "generated_tokens": 4, "trained_tokens": 4, "step_seconds": 0.1, "generation_seconds": 0.05,
            "weight_sync_seconds": 0.01}


def test_reporter_feeds_progress_and_exports_to_the_export_dir(tmp_path, fake, clock):
    spec = validation.validate(minimal_manifest()).spec
    writer = StatusWriter("my-run", "team-a", fake, interval=5.0, clock=clock)
    (tmp_path / "run").mkdir()
    reporter = Reporter(tmp_path / "run", "my-run", "team-a", spec, None, export_dir=tmp_path / "export" / "my-run",
                        status=writer)
    assert fake.bodies() == [{"status": {"progress": {"maxSteps": spec.algorithm.max_steps}}}]
    reporter.evaluation({"step": 0, "eval_greedy": 0.25, "eval_pass@k": 0.5, "eval_maj@k": 0.25, "eval_k": 4})
    clock.now += 1
    reporter.step(_record(1), [_sample(True), _sample(False)])
    assert len(fake.calls) == 1  # within the interval
    reporter.checkpoint(1)  # forced
    assert fake.bodies()[-1] == {"status": {"progress": {
        "maxSteps": spec.algorithm.max_steps, "accuracy": 0.25, "step": 1, "rewardMean": 0.5, "tokensPerSecond": 42.0,
        "weightsVersion": 1, "lastCheckpointStep": 1}}}
    exported = (tmp_path / "export" / "my-run" / "step-00000001.jsonl").read_text().splitlines()
    assert [json.loads(line)["correct"] for line in exported] == [True]  # export.which defaults to correct only
    assert not (tmp_path / "run" / "samples").exists()


def test_reporter_without_status_writer_is_unchanged(tmp_path):
    spec = validation.validate(minimal_manifest()).spec
    reporter = Reporter(tmp_path, "r", "default", spec, None)
    reporter.step(_record(1), [_sample(True)])
    reporter.checkpoint(1)
    assert (tmp_path / "samples" / "step-00000001.jsonl").exists()
