"""Bad ReasoningRun manifests, each with the field path its error must name.

Shared by the local validator's unit test and the `kubectl apply` integration test, so both sides
are held to the same cases. A case is a patch deep-merged into the minimal manifest; DELETE removes
a key.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

from tests.conftest import minimal_manifest

DELETE = object()


class Case(NamedTuple):
    id: str
    patch: dict[str, Any]
    path: str

    def manifest(self, name: str = "bad") -> dict:
        return _merge(minimal_manifest(name), self.patch)


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def spec(**patch: Any) -> dict:
    return {"spec": patch}


V = {"name": "countdown"}

CASES = [
    # what users pass in to pods
    Case("env sets an operator variable", spec(trainer={"env": [{"name": "MASTER_ADDR", "value": "x"}]}),
         "spec.trainer.env[0].name"),
    Case("env sets a ZEROTH_ variable", spec(rollout={"engine": "hf", "gpusPerReplica": 0,
                                                      "env": [{"name": "ZEROTH_RUN", "value": "x"}]}),
         "spec.rollout.env[0].name"),
    Case("env has value and valueFrom", spec(trainer={"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]}),
         "spec.trainer.env[0].valueFrom"),
    Case("envFrom names nothing", spec(trainer={"envFrom": [{"prefix": "A_"}]}), "spec.trainer.envFrom[0].secretRef"),
    Case("a label in the operator's prefix", spec(trainer={"labels": {"zeroth.dev/role": "x"}}), "spec.trainer.labels"),
    Case("an annotation in Kueue's prefix", spec(trainer={"annotations": {"kueue.x-k8s.io/queue-name": "q"}}),
         "spec.trainer.annotations"),
    Case("a label value with a space", spec(trainer={"labels": {"team": "r l"}}), "spec.trainer.labels"),
    Case("a negative grace period", spec(trainer={"terminationGracePeriodSeconds": -1}),
         "spec.trainer.terminationGracePeriodSeconds"),
    Case("a negative start-up deadline", spec(startupDeadlineSeconds=-5), "spec.startupDeadlineSeconds"),
    Case("an exit code out of range", spec(failOnExitCodes=[256]), "spec.failOnExitCodes[0]"),
    Case("a zero active deadline", spec(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds"),
    Case("an image pull secret that is no name", spec(imagePullSecrets=["Not A Name"]), "spec.imagePullSecrets[0]"),

    # volumes, the model cache and the TTL
    Case("a volume with the operator's name", spec(trainer={"volumes": [{"name": "config", "emptyDir": {}}]}),
         "spec.trainer.volumes[0].name"),
    Case("a volume with two sources", spec(rollout={"volumes": [
        {"name": "d", "emptyDir": {}, "persistentVolumeClaim": {"claimName": "c"}}]}), "spec.rollout.volumes[0].name"),
    Case("a volume with no source", spec(trainer={"volumes": [{"name": "d"}]}), "spec.trainer.volumes[0].name"),
    Case("a hostPath volume", spec(trainer={"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
         "spec.trainer.volumes[0].hostPath"),
    Case("two volumes of one name", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}, {"name": "d", "emptyDir": {}}]}),
         "spec.trainer.volumes"),
    Case("a mount of a volume the role lacks", spec(
        trainer={"volumes": [{"name": "d", "emptyDir": {}}]},
        rollout={"volumeMounts": [{"name": "d", "mountPath": "/d"}]}), "spec.rollout.volumeMounts"),
    Case("a mount over /etc/zeroth", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}],
                                           "volumeMounts": [{"name": "d", "mountPath": "/etc/zeroth"}]}),
         "spec.trainer.volumeMounts[0].mountPath"),
    Case("a mount inside /dev/shm", spec(rollout={"volumes": [{"name": "d", "emptyDir": {}}],
                                          "volumeMounts": [{"name": "d", "mountPath": "/dev/shm/x"}]}),
         "spec.rollout.volumeMounts[0].mountPath"),
    Case("a mount holding /tmp", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}],
                                       "volumeMounts": [{"name": "d", "mountPath": "/dev"}]}),
         "spec.trainer.volumeMounts[0].mountPath"),
    Case("a relative mountPath", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}],
                                       "volumeMounts": [{"name": "d", "mountPath": "data"}]}),
         "spec.trainer.volumeMounts[0].mountPath"),
    Case("a mountPath with '..'", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}],
                                        "volumeMounts": [{"name": "d", "mountPath": "/data/../etc/zeroth"}]}),
         "spec.trainer.volumeMounts[0].mountPath"),
    Case("a subPath climbing out", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}],
                                         "volumeMounts": [{"name": "d", "mountPath": "/d", "subPath": "a/../.."}]}),
         "spec.trainer.volumeMounts[0].subPath"),
    Case("two mounts at one path", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}, {"name": "e", "emptyDir": {}}],
                                         "volumeMounts": [{"name": "d", "mountPath": "/d"}, {"name": "e", "mountPath": "/d"}]}),
         "spec.trainer.volumeMounts"),
    Case("a mount over the checkpoints", spec(trainer={"volumes": [{"name": "d", "emptyDir": {}}],
                                               "volumeMounts": [{"name": "d", "mountPath": "/checkpoints"}]}),
         "spec.trainer.volumeMounts"),
    Case("a mount inside the export path", spec(export={"path": "/data/out"}, trainer={
        "volumes": [{"name": "d", "emptyDir": {}}], "volumeMounts": [{"name": "d", "mountPath": "/data/out/x"}]}),
         "spec.trainer.volumeMounts"),
    Case("a rollout mount over the model cache", spec(modelCache={"volumeClaimName": "c"}, rollout={
        "volumes": [{"name": "d", "emptyDir": {}}], "volumeMounts": [{"name": "d", "mountPath": "/cache"}]}),
         "spec.rollout.volumeMounts"),
    Case("a model cache without a claim", spec(modelCache={"path": "/cache"}), "spec.modelCache.volumeClaimName"),
    Case("a model cache at /tmp", spec(modelCache={"volumeClaimName": "c", "path": "/tmp/models"}), "spec.modelCache.path"),
    Case("a model cache inside the checkpoints", spec(modelCache={"volumeClaimName": "c", "path": "/checkpoints/models"}),
         "spec.modelCache.path"),
    Case("HF_HOME beside a model cache", spec(modelCache={"volumeClaimName": "c"},
                                             trainer={"env": [{"name": "HF_HOME", "value": "/x"}]}), "spec.trainer.env"),
    Case("a negative TTL", spec(ttlSecondsAfterFinished=-1), "spec.ttlSecondsAfterFinished"),

    # missing required fields
    Case("missing model", spec(model=DELETE), "spec.model"),
    Case("missing model name", spec(model={"name": DELETE}), "spec.model.name"),
    Case("missing dataset", spec(dataset=DELETE), "spec.dataset"),
    Case("missing verifiers", spec(verifiers=DELETE), "spec.verifiers"),
    Case("missing verifier name", spec(verifiers=[{"weight": 1.0}]), "spec.verifiers[0].name"),
    # wrong types
    Case("model is a string", spec(model="Qwen/Qwen2.5-3B"), "spec.model"),
    Case("weight is a string", spec(verifiers=[{**V, "weight": "1"}]), "spec.verifiers[0].weight"),
    Case("groupSize is a word", spec(algorithm={"groupSize": "eight"}), "spec.algorithm.groupSize"),
    Case("groupSize is fractional", spec(algorithm={"groupSize": 2.5}), "spec.algorithm.groupSize"),
    Case("suspend is a string", spec(suspend="yes"), "spec.suspend"),
    Case("nodeSelector value is a number", spec(rollout={"nodeSelector": {"gpu": 1}}), "spec.rollout.nodeSelector.gpu"),
    Case("cpu request is a boolean", spec(trainer={"resources": {"requests": {"cpu": True}}}), "spec.trainer.resources.requests.cpu"),
    # out of range
    Case("no verifiers", spec(verifiers=[]), "spec.verifiers"),
    Case("zero weight", spec(verifiers=[{**V, "weight": 0}]), "spec.verifiers[0].weight"),
    Case("group of one", spec(algorithm={"groupSize": 1}), "spec.algorithm.groupSize"),
    Case("zero learning rate", spec(algorithm={"learningRate": 0}), "spec.algorithm.learningRate"),
    Case("negative staleness", spec(algorithm={"maxStaleness": -1}), "spec.algorithm.maxStaleness"),
    Case("importance weight capped below 1", spec(algorithm={"importanceSamplingCap": 0.5}),
         "spec.algorithm.importanceSamplingCap"),
    Case("offPolicyClip is a string", spec(algorithm={"offPolicyClip": "yes"}), "spec.algorithm.offPolicyClip"),
    Case("ZeRO stage 4", spec(trainer={"deepspeed": {"zeroStage": 4}}), "spec.trainer.deepspeed.zeroStage"),
    Case("negative backoffLimit", spec(backoffLimit=-1), "spec.backoffLimit"),
    Case("rollout scaled to zero", spec(rollout={"replicas": 0}), "spec.rollout.replicas"),
    # unknown enum values and patterns
    Case("unknown verifier", spec(verifiers=[{"name": "bleu"}]), "spec.verifiers[0].name"),
    Case("unknown loss type", spec(algorithm={"lossType": "ppo"}), "spec.algorithm.lossType"),
    Case("unknown KL estimator", spec(algorithm={"klEstimator": "k4"}), "spec.algorithm.klEstimator"),
    Case("unknown dtype", spec(model={"name": "m", "dtype": "float64"}), "spec.model.dtype"),
    Case("unknown toleration operator", spec(trainer={"tolerations": [{"key": "k", "operator": "Maybe"}]}),
         "spec.trainer.tolerations[0].operator"),
    Case("unknown dataset scheme", spec(dataset={"source": "s3://bucket/tasks"}), "spec.dataset.source"),
    Case("parquet without a path", spec(dataset={"source": "parquet:"}), "spec.dataset.source"),
    Case("unknown answer mode", spec(verifiers=[{**V, "answer": {"mode": "last-number"}}]), "spec.verifiers[0].answer.mode"),
    Case("chatTemplate is a string", spec(dataset={"source": "builtin:countdown", "chatTemplate": "yes"}),
         "spec.dataset.chatTemplate"),
    Case("empty stop string", spec(rollout={"stop": ["</answer>", ""]}), "spec.rollout.stop[1]"),
    Case("stop is one string, not a list", spec(rollout={"stop": "</answer>"}), "spec.rollout.stop"),
    Case("too many stop strings", spec(rollout={"stop": [f"s{i}" for i in range(17)]}), "spec.rollout.stop"),
    Case("lower-case currency", spec(cost={"currency": "usd"}), "spec.cost.currency"),
    Case("queue name with spaces", spec(queueName="Gpu Queue"), "spec.queueName"),
    # unknown fields
    Case("unknown spec field", spec(epochs=3), "spec.epochs"),
    Case("unknown algorithm field", spec(algorithm={"beta": 0.1}), "spec.algorithm.beta"),
    Case("unknown verifier field", spec(verifiers=[{**V, "partialCredit": True}]), "spec.verifiers[0].partialCredit"),
    # cross-field rules (CEL)
    Case("clipHigh below clipLow", spec(algorithm={"clipLow": 0.3, "clipHigh": 0.2}), "spec.algorithm.clipHigh"),
    Case("overlong buffer too long", spec(algorithm={"maxResponseTokens": 64, "overlong": {"bufferTokens": 64}}),
         "spec.algorithm.overlong.bufferTokens"),
    Case("GPUs not divisible by TP", spec(rollout={"gpusPerReplica": 3, "tensorParallelSize": 2}),
         "spec.rollout.tensorParallelSize"),
    Case("vLLM without GPUs", spec(rollout={"engine": "vllm", "gpusPerReplica": 0}), "spec.rollout.engine"),
    Case("offloadParams below ZeRO-3", spec(trainer={"deepspeed": {"zeroStage": 2, "offloadParams": True}}),
         "spec.trainer.deepspeed.offloadParams"),
    Case("duplicate verifiers", spec(verifiers=[V, V]), "spec.verifiers"),
    Case("eval split is the train split", spec(dataset={"source": "builtin:countdown", "evalSplit": "train"}),
         "spec.dataset.evalSplit"),
    Case("minNumber above maxNumber", spec(dataset={"source": "builtin:countdown", "countdown": {"minNumber": 9, "maxNumber": 3}}),
         "spec.dataset.countdown.minNumber"),
    Case("empty answer tag", spec(verifiers=[{**V, "answer": {"mode": "tag", "tag": ""}}]), "spec.verifiers[0].answer.tag"),
    Case("name too long for pod names", {"metadata": {"name": "r" * 41}}, "metadata.name"),
]
