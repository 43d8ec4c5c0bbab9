"""The likelihood predictor against an independent computation: a plain forward pass written here
(no KV cache, no shared prefix, no batching), on a tiny random model and on the real SmolLM2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compressbench.data.known_info import generate_known_info, keep_slots
from compressbench.errors import UsageError
from compressbench.predict_loglik import (
    check_backend_can_score,
    choice_scores,
    loglik_prompt,
    predict_loglik,
    resolve_prompt_format,
)
from compressbench.prompts import load_prompt
from compressbench.types import Example


def _plain_logprob(backend, prefix_ids: list[int], cont_text: str) -> float:
    """sum_j log softmax(model(prefix + c)[len(prefix) + j - 1])[c_j]: one full forward, float64."""
    import torch

    tok = backend.tokenizer
    c = tok(cont_text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = backend.model(input_ids=torch.tensor([prefix_ids + c])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(prefix_ids) + j - 1, t] for j, t in enumerate(c)))


def _expected_choice(lls: list[float], options: tuple[str, ...]) -> tuple[int, int]:
    """lm-evaluation-harness: acc = argmax ll; acc_norm = argmax ll / len(option in characters)."""
    return int(np.argmax(lls)), int(np.argmax(np.array(lls) / np.array([len(o) for o in options], dtype=float)))


def _mc_example(options=("red", "blue", "green", "yellow"), gold="B") -> Example:
    return Example(id="q1", context="The colour is blue.", question="What is the colour in the record?",
                   answers=(gold,), options=options, reference=options["ABCD".index(gold)])


def test_completion_format_equals_a_plain_forward_on_a_tiny_model(tiny_gpt2):
    ex = _mc_example(options=("def", "return x", "import os", "class A:"), gold="C")
    z = "The notes say: import os"
    pred = predict_loglik(tiny_gpt2, ex, z, prompt_format="completion")
    assert pred.prompt_format == "completion"
    prefix = f"Notes: {z}\nQuestion: {ex.question}\nAnswer:"  # prompts/predict_loglik.yaml, by hand
    ids = tiny_gpt2.tokenizer(prefix)["input_ids"]  # this tokenizer adds no BOS
    lls = [_plain_logprob(tiny_gpt2, ids, " " + o) for o in ex.options]
    np.testing.assert_allclose([o.logprob_nats for o in pred.options], lls, atol=1e-4, rtol=0)
    assert [o.continuation for o in pred.options] == [" " + o for o in ex.options]
    assert (pred.choice, pred.choice_norm) == _expected_choice(lls, ex.options)
    for o in pred.options:
        assert o.n_tokens == len(tiny_gpt2.tokenizer(o.continuation, add_special_tokens=False)["input_ids"])
        assert o.logprob_per_token_nats == pytest.approx(o.logprob_nats / o.n_tokens)
    acc, acc_norm = choice_scores(pred, ex)
    assert acc == float("ABCD"[pred.choice] == "C") and acc_norm == float("ABCD"[pred.choice_norm] == "C")


def test_chat_format_scores_the_assistant_answer_on_a_tiny_model(tiny_llama):
    """Chat models: the prefix is the chat template up to the assistant's turn (one BOS, from the
    tokenizer), and the scored continuation is the option itself, as the assistant's reply."""
    ex = _mc_example()
    z = "The colour is blue."
    assert resolve_prompt_format(tiny_llama) == "chat"
    pred = predict_loglik(tiny_llama, ex, z)
    assert pred.prompt_format == "chat"
    p = load_prompt("predict_loglik")
    # By hand, from the tiny template "<|role|>content<|end|>\n" ... "<|assistant|>":
    text = (f"<|system|>{p.system}<|end|>\n<|user|>Notes: {z}\nQuestion: {ex.question}<|end|>\n<|assistant|>")
    tok = tiny_llama.tokenizer
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    prefix, delim, fmt = loglik_prompt(tiny_llama, ex, z)
    assert (delim, fmt) == ("", "chat") and tok(prefix)["input_ids"] == ids
    lls = [_plain_logprob(tiny_llama, ids, o) for o in ex.options]  # no delimiter: the reply itself
    np.testing.assert_allclose([o.logprob_nats for o in pred.options], lls, atol=1e-4, rtol=0)
    assert (pred.choice, pred.choice_norm) == _expected_choice(lls, ex.options)


def test_open_question_is_scored_by_the_reference_per_token(tiny_gpt2):
    ex = Example(id="o1", context="c", question="Which function is it?", reference="def main():")
    pred = predict_loglik(tiny_gpt2, ex, "a summary", prompt_format="completion")
    assert pred.choice is None and pred.options == () and pred.answer is None
    prefix = "Notes: a summary\nQuestion: Which function is it?\nAnswer:"
    expected = _plain_logprob(tiny_gpt2, tiny_gpt2.tokenizer(prefix)["input_ids"], " def main():")
    assert pred.reference_logprob_nats == pytest.approx(expected, abs=1e-4)
    n = len(tiny_gpt2.tokenizer(" def main():", add_special_tokens=False)["input_ids"])
    assert pred.reference_n_tokens == n
    assert pred.reference_logprob_per_token_nats == pytest.approx(expected / n, abs=1e-4)
    assert pred.as_dict()["reference_logprob_per_token_nats"] == pred.reference_logprob_per_token_nats


def test_one_score_matrix_call_per_example(tiny_gpt2):
    calls = []

    class Counting:
        name = "counting"
        has_chat_template = False

        def score_matrix(self, prefixes, continuations):
            calls.append((list(prefixes), list(continuations)))
            return tiny_gpt2.score_matrix(prefixes, continuations)

        def score(self, prefixes, continuations):
            raise AssertionError("a choice question must not call score()")

        def count_tokens(self, texts):
            return tiny_gpt2.count_tokens(texts)

    ex = _mc_example()
    pred = predict_loglik(Counting(), ex, "notes")
    assert pred.prompt_format == "completion"  # no chat_prefix: plain-text form
    assert len(calls) == 1 and len(calls[0][0]) == 1 and calls[0][1] == [" red", " blue", " green", " yellow"]


def test_acc_norm_differs_from_acc_as_lm_eval_defines_it():
    class Fixed:
        """Totals chosen by hand: 'ab' -1.0 (-0.5/char), 'abcdef' -1.5 (-0.25/char)."""
        name = "fixed"

        def score_matrix(self, prefixes, continuations):
            return np.array([[-1.0, -1.5]])

        def score(self, prefixes, continuations):
            raise AssertionError

        def count_tokens(self, texts):
            return [1 for _ in texts]

    ex = _mc_example(options=("ab", "abcdef"), gold="B")
    pred = predict_loglik(Fixed(), ex, "z")
    assert (pred.answer, pred.answer_norm) == ("A", "B")
    assert choice_scores(pred, ex) == (0.0, 1.0)


def test_clear_errors():
    class NoScore:
        name = "gen-only"

        def generate(self, chats, params):
            return []

    with pytest.raises(UsageError, match="cannot score continuations.*predictor_mode: generate"):
        check_backend_can_score(NoScore())
    with pytest.raises(UsageError, match="prompt_format must be one of"):
        resolve_prompt_format(NoScore(), "json")
    with pytest.raises(UsageError, match="cannot render a chat template"):
        resolve_prompt_format(NoScore(), "chat")


@pytest.mark.slow
def test_smollm2_choice_equals_a_plain_forward_and_reads_the_notes(smollm2):
    """Real SmolLM2 (chat template): the predictor's totals equal a plain forward over
    apply_chat_template(...) + the option's tokens, and it answers from the notes."""
    exs = generate_known_info(n_contexts=12, n_slots=4, n_values=4, seed=11)
    tok = smollm2.tokenizer
    p = load_prompt("predict_loglik")
    right_full, right_empty = 0, 0
    for k, ex in enumerate(exs):
        # reading the notes: the sweep's default plain-text format
        right_full += predict_loglik(smollm2, ex, ex.context, prompt_format="completion").answer in ex.answers
        right_empty += predict_loglik(smollm2, ex, "", prompt_format="completion").answer in ex.answers
        if k < 3:  # chat-template handling: the scored continuation is the assistant's reply
            pred = predict_loglik(smollm2, ex, ex.context, prompt_format="chat")
            chat = p.render_chat(compression=ex.context, question=ex.question)
            ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"]
            tail = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
            assert ids[-len(tail):] == tail  # the prefix ends where the assistant's reply starts
            lls = [_plain_logprob(smollm2, list(ids), o) for o in ex.options]
            np.testing.assert_allclose([o.logprob_nats for o in pred.options], lls, atol=1e-3, rtol=0)
            assert (pred.choice, pred.choice_norm) == _expected_choice(lls, ex.options)
    print("right_full", right_full, "right_empty", right_empty)
    assert right_full >= 10  # reads the answer from full notes (chance 3 of 12)
    assert right_empty <= 7
    # keep:4 keeps all 4 slots: the same answers as the full context on this task
    kept = predict_loglik(smollm2, exs[0], keep_slots(exs[0], 4))
    assert math.isfinite(kept.options[0].logprob_nats)
