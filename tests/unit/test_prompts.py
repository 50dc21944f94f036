"""Prompts to token ids: chat templates from the tokenizer, veRL chat messages, and over-long
prompts refused (at the start of a run and in the worker), never cut.

The expected renderings are written out by hand from the test tokenizer's template."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.unit import tiny_chat
from zeroth import api
from zeroth.rollout import prompts
from zeroth.rollout.worker import RolloutWorker


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_chat.save(tmp_path_factory.mktemp("chat"), tiny_chat.tokenizer())


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)  # loaded as a run loads it


def text(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def test_plain_prompts_are_tokenized_as_they_are(tok):
    [ids] = prompts.encode(tok, ["2+2?"], chat_template=False)
    assert text(tok, ids) == "2+2?"


def test_chat_template_renders_a_user_message_with_the_generation_prompt(tok):
    [ids] = prompts.encode(tok, ["2+2?"], chat_template=True)
    assert text(tok, ids) == "<|user|>2+2?<|end|>\n<|assistant|>"
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>") and ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")


def test_chat_messages_always_use_the_template(tok):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    for flag in (False, True):
        [ids] = prompts.encode(tok, [chat], chat_template=flag)
        assert text(tok, ids) == "<|system|>Be brief.<|end|>\n<|user|>1+1?<|end|>\n<|assistant|>"


def test_a_tokenizer_without_a_chat_template_is_a_clear_error(tmp_path):
    from transformers import AutoTokenizer

    tiny_chat.tokenizer(chat_template=False).save_pretrained(tmp_path)
    bare = AutoTokenizer.from_pretrained(tmp_path)
    assert prompts.encode(bare, ["x"], chat_template=False)  # plain text needs none
    with pytest.raises(ValueError, match="chatTemplate is true, but the model's tokenizer has no chat template"):
        prompts.encode(bare, ["x"], chat_template=True)
    with pytest.raises(ValueError, match="prompts are chat messages, but the model's tokenizer has no chat template"):
        prompts.encode(bare, [[{"role": "user", "content": "x"}]], chat_template=False)


def test_the_worker_generates_from_the_chat_rendered_prompt(model_dir, tok):
    spec = tiny_chat.spec_dict(model_dir, dataset={"chatTemplate": True}, algorithm={"maxResponseTokens": 3})
    worker = RolloutWorker(str(model_dir), spec)
    verl = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    samples = worker.generate([{"id": "a", "prompt": "2+2?", "gold": "4"}, {"id": "b", "prompt": verl, "gold": "1"}],
                              group_size=1, seed=0, greedy=True)
    assert text(tok, samples[0].prompt_ids) == "<|user|>2+2?<|end|>\n<|assistant|>"
    assert text(tok, samples[1].prompt_ids) == "<|system|>S<|end|>\n<|user|>q<|end|>\n<|assistant|>"


# --- over-long prompts ----------------------------------------------------------------------------


def run_spec(limit: int, chat: bool = False) -> api.ReasoningRunSpec:
    return api.ReasoningRunSpec.model_validate(tiny_chat.spec_dict(
        "m", dataset={"chatTemplate": chat}, algorithm={"maxPromptTokens": limit}))


def task(task_id: str, prompt) -> SimpleNamespace:
    return SimpleNamespace(id=task_id, prompt=prompt)


def test_check_lengths_names_every_split_task_and_the_limit(tok):
    train = [task("short-1", "12345"), task("long-1", "1234567"), task("long-2", "x" * 20)]
    held_out = [task("fine", "123")]
    prompts.check_lengths(tok, run_spec(7), [("train", train[:2]), ("test", held_out)])  # 7 tokens fit
    with pytest.raises(ValueError) as err:
        prompts.check_lengths(tok, run_spec(6), [("train", train), ("test", held_out)])
    message = str(err.value)
    assert "2 of 3 prompts of split 'train' are longer than spec.algorithm.maxPromptTokens (6)" in message
    assert "long-1 (7 tokens), long-2 (20 tokens)" in message and "short-1" not in message
    assert "'test'" not in message


def test_check_lengths_counts_the_chat_template(tok):
    # "hi" is 2 tokens alone, 6 as a chat turn: <|user|> h i <|end|> \n <|assistant|>
    prompts.check_lengths(tok, run_spec(2), [("train", [task("t", "hi")])])
    with pytest.raises(ValueError, match=r"t \(6 tokens\)"):
        prompts.check_lengths(tok, run_spec(5, chat=True), [("train", [task("t", "hi")])])
    prompts.check_lengths(tok, run_spec(6, chat=True), [("train", [task("t", "hi")])])


def test_check_lengths_lists_at_most_a_few(tok):
    many = [task(f"t{i}", "123456") for i in range(9)]
    with pytest.raises(ValueError, match=r"9 of 9 .*t4 \(6 tokens\) and 4 more"):
        prompts.check_lengths(tok, run_spec(5), [("train", many)])


def test_the_worker_refuses_an_over_long_prompt_instead_of_cutting_it(model_dir):
    spec = tiny_chat.spec_dict(model_dir, algorithm={"maxPromptTokens": 4, "maxResponseTokens": 2})
    worker = RolloutWorker(str(model_dir), spec)
    assert len(worker.generate([{"id": "fits", "prompt": "1234", "gold": "1"}], 1, seed=0, greedy=True)) == 1
    with pytest.raises(ValueError, match=r"1 of 2 prompts in this request .*maxPromptTokens \(4\): too-long \(5 tokens\)"):
        worker.generate([{"id": "fits", "prompt": "1234", "gold": "1"}, {"id": "too-long", "prompt": "12345", "gold": "1"}],
                        1, seed=0, greedy=True)


def test_a_run_refuses_over_long_prompts_when_it_loads_its_tasks(tmp_path, tok):
    """The trainer's task loading (before step 0) checks both splits with the run's tokenizer."""
    import json

    from zeroth.trainer import loop

    for split, questions in {"train": ["1+1?", "x" * 30], "test": ["2+2?", "y" * 25]}.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"question": q, "answer": "2"}) + "\n" for q in questions))
    spec = api.ReasoningRunSpec.model_validate(tiny_chat.spec_dict(
        "m", dataset={"source": f"jsonl:{tmp_path}/{{split}}.jsonl", "promptTemplate": "{question}"},
        algorithm={"maxPromptTokens": 20}))
    with pytest.raises(ValueError, match=r"1 of 2 prompts of split 'train' .*\(20\): 1 \(30 tokens\).*"
                                         r"; 1 of 2 prompts of split 'test' .*\(20\): 1 \(25 tokens\)"):
        loop.load_tasks(spec, tok)
    tasks, held_out = loop.load_tasks(spec.model_copy(update={"algorithm": spec.algorithm.model_copy(
        update={"max_prompt_tokens": 30})}), tok)
    assert [t.prompt for t in tasks] == ["1+1?", "x" * 30] and [t.prompt for t in held_out] == ["2+2?", "y" * 25]
