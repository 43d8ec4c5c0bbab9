"""The likelihood predictor against an independent computation: a plain forward pass written here
(no KV cache, no shared prefix, no batching), on a tiny random model and on the real SmolLM2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compressbench.data.known_info import generate_known_info, keep_slots
from compressbench.core.errors import UsageError
from compressbench.measure.predict_loglik import (
    check_backend_can_score,
    choice_scores,
    loglik_prompt,
    predict_loglik,
    resolve_prompt_format,
)
from compressbench.core.prompts import load_prompt
from compressbench.core.types import Example


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


# --- Without a model (found by mutation testing: every test above needs torch, which mutmut's forked
# workers cannot run). A scorer written here whose log-probs are a closed form of the text, so every
# total, choice and prompt string below is computed by hand from the module's documented rules.


def _char_logprob(prefix: str, cont: str) -> float:
    """log p(cont | prefix) of a toy model: each character c costs log((1 + #c in prefix) / (len(prefix) + 64))."""
    return sum(math.log((1 + prefix.count(c)) / (len(prefix) + 64)) for c in cont)


class _CharScorer:
    """A backend with score_matrix/score/count_tokens (tokens = characters) and, optionally, a chat
    template that renders "<role>content|" per message and ends at "<assistant>"."""

    def __init__(self, chat: bool = False, name: str = "char"):
        self.name = name
        self.calls: list[tuple] = []
        if chat:
            self.has_chat_template = True
            self.chat_prefix = lambda msgs: "".join(f"<{m['role']}>{m['content']}|" for m in msgs) + "<assistant>"

    def score_matrix(self, prefixes, continuations):
        self.calls.append(("score_matrix", list(prefixes), list(continuations)))
        return [[_char_logprob(p, c) for c in continuations] for p in prefixes]

    def score(self, prefixes, continuations):
        from compressbench.core.types import TokenLogprobs

        self.calls.append(("score", list(prefixes), list(continuations)))
        return [TokenLogprobs(token_ids=tuple(map(ord, c)),
                              logprobs_nats=tuple(_char_logprob(p + c[:i], ch) for i, ch in enumerate(c)))
                for p, c in zip(prefixes, continuations)]

    def count_tokens(self, texts):
        return [len(t) for t in texts]


_Q = "What is the colour in the record?"


def test_completion_format_scores_each_option_after_answer_with_a_space():
    ex = _mc_example(options=("red", "blue", "green", "yellow"), gold="C")
    backend = _CharScorer()
    pred = predict_loglik(backend, ex, "The colour is green.")
    prefix = f"Notes: The colour is green.\nQuestion: {_Q}\nAnswer:"  # prompts/predict_loglik.yaml, by hand
    assert backend.calls == [("score_matrix", [prefix], [" red", " blue", " green", " yellow"])]
    assert pred.prompt_format == "completion" and pred.prompt_id == load_prompt("predict_loglik").id
    lls = [_char_logprob(prefix, " " + o) for o in ex.options]
    assert [o.logprob_nats for o in pred.options] == pytest.approx(lls, rel=1e-12)
    assert [o.n_tokens for o in pred.options] == [4, 5, 6, 7]
    assert [o.continuation for o in pred.options] == [" red", " blue", " green", " yellow"]
    assert [o.logprob_per_token_nats for o in pred.options] == pytest.approx([ll / n for ll, n in zip(lls, (4, 5, 6, 7))])
    assert (pred.choice, pred.choice_norm) == _expected_choice(lls, ex.options)
    assert pred.answer == "ABCD"[pred.choice] and pred.answer_norm == "ABCD"[pred.choice_norm]
    assert choice_scores(pred, ex) == (float(pred.answer == "C"), float(pred.answer_norm == "C"))
    assert pred.reference_logprob_nats is None and pred.reference_logprob_per_token_nats is None


def test_chat_format_scores_the_reply_itself_after_the_rendered_template():
    ex = _mc_example(options=("red", "blue"), gold="A")
    backend = _CharScorer(chat=True)
    assert resolve_prompt_format(backend) == "chat" and resolve_prompt_format(backend, "completion") == "completion"
    pred = predict_loglik(backend, ex, "red things")
    p = load_prompt("predict_loglik")
    prefix = f"<system>{p.system}|<user>Notes: red things\nQuestion: {_Q}|<assistant>"
    assert loglik_prompt(backend, ex, "red things") == (prefix, "", "chat")
    assert backend.calls == [("score_matrix", [prefix], ["red", "blue"])]
    lls = [_char_logprob(prefix, o) for o in ex.options]
    assert [o.logprob_nats for o in pred.options] == pytest.approx(lls, rel=1e-12)
    assert (pred.prompt_format, pred.choice, pred.choice_norm) == ("chat", *_expected_choice(lls, ex.options))
    # asking for the completion format of a chat backend gives the plain-text prompt
    forced = predict_loglik(backend, ex, "red things", prompt_format="completion")
    assert forced.prompt_format == "completion"
    assert backend.calls[-1][1] == [f"Notes: red things\nQuestion: {_Q}\nAnswer:"]


def test_acc_and_acc_norm_break_ties_on_the_first_option():
    class Fixed(_CharScorer):
        def score_matrix(self, prefixes, continuations):
            return [[-2.0, -2.0, -4.0]]  # acc tie (A, B); per char -2/2, -2/3, -4/6: acc_norm tie (B, C)

    ex = Example(id="t", context="c", question="q", answers=("B",), options=("ab", "abc", "abcdef"))
    pred = predict_loglik(Fixed(), ex, "z")
    assert (pred.choice, pred.choice_norm, pred.answer, pred.answer_norm) == (0, 1, "A", "B")
    assert choice_scores(pred, ex) == (0.0, 1.0)
    d = pred.as_dict()
    assert d["answer"] == "A" and d["answer_norm"] == "B" and d["prompt_format"] == "completion"
    assert d["options"][2] == {"option": "abcdef", "logprob_nats": -4.0, "n_tokens": 7, "logprob_per_token_nats": -4.0 / 7}
    assert d["reference_logprob_nats"] is None and d["reference_n_tokens"] is None
    assert d["reference_logprob_per_token_nats"] is None


def test_open_question_reference_log_prob_per_token_by_hand():
    ex = Example(id="open", context="c", question="Which city?", answers=("Oslo",), reference="Oslo")
    backend = _CharScorer()
    pred = predict_loglik(backend, ex, "notes")
    prefix = "Notes: notes\nQuestion: Which city?\nAnswer:"
    assert backend.calls == [("score", [prefix], [" Oslo"])]
    total = sum(_char_logprob(prefix + " Oslo"[:i], ch) for i, ch in enumerate(" Oslo"))
    assert pred.reference_logprob_nats == pytest.approx(total, rel=1e-12) and pred.reference_n_tokens == 5
    assert pred.reference_logprob_per_token_nats == pytest.approx(total / 5, rel=1e-12)
    assert pred.options == () and pred.answer is None and pred.answer_norm is None
    d = pred.as_dict()
    assert d["options"] == [] and d["reference_n_tokens"] == 5
    assert d["reference_logprob_per_token_nats"] == pytest.approx(total / 5)
    with pytest.raises(UsageError, match="acc/acc_norm need a multiple-choice prediction"):
        choice_scores(pred, ex)

    from compressbench.measure.predict_loglik import OptionScore

    assert math.isnan(OptionScore(option="", continuation="", logprob_nats=0.0, n_tokens=0).logprob_per_token_nats)


def test_batch_pairs_examples_with_compressions_in_order():
    from compressbench.measure.predict_loglik import predict_loglik_batch

    exs = [_mc_example(gold="A"), _mc_example(gold="D")]
    backend = _CharScorer()
    preds = predict_loglik_batch(backend, exs, ["first", "second"])
    assert [c[1][0].split("\n")[0] for c in backend.calls] == ["Notes: first", "Notes: second"]
    assert [p.answer for p in preds] == [predict_loglik(_CharScorer(), e, z).answer for e, z in zip(exs, ["first", "second"])]
    with pytest.raises(UsageError, match="got 2 examples and 1 compressions"):
        predict_loglik_batch(backend, exs, ["only one"])


def test_model_free_errors_name_what_is_wrong():
    from compressbench.core.errors import BackendError

    class WrongShape(_CharScorer):
        def score_matrix(self, prefixes, continuations):
            return [[-1.0]]

    ex = _mc_example()
    with pytest.raises(BackendError, match=r"wrongshape: score_matrix returned shape \(1, 1\), expected \(1, 4\)"):
        predict_loglik(WrongShape(name="wrongshape"), ex, "z")
    with pytest.raises(UsageError, match="example 'bare' has neither options nor a reference"):
        predict_loglik(_CharScorer(), Example(id="bare", context="c", question="q", answers=("x",)), "z")
    with pytest.raises(UsageError, match="neither options nor a reference"):
        predict_loglik(_CharScorer(), Example(id="b", context="c", question="q", answers=("x",), reference="  "), "z")
    with pytest.raises(UsageError, match="example must be an Example, got dict"):
        predict_loglik(_CharScorer(), {"id": "q"}, "z")
    with pytest.raises(UsageError, match="compression must be a string, got int"):
        predict_loglik(_CharScorer(), ex, 3)
    with pytest.raises(UsageError, match="'char' cannot render a chat template"):
        resolve_prompt_format(_CharScorer(), "chat")
    assert resolve_prompt_format(_CharScorer(), "completion") == "completion"

    class HalfChat(_CharScorer):
        has_chat_template = True  # but no chat_prefix: cannot render it client-side

    assert resolve_prompt_format(HalfChat()) == "completion"

    class OnlyScore:
        name = "only-score"

        def score(self, prefixes, continuations):
            return []

    with pytest.raises(UsageError, match="'only-score' cannot score continuations \\(no score_matrix, count_tokens\\)"):
        check_backend_can_score(OnlyScore())
    with pytest.raises(UsageError, match="compressor 'only-score'"):
        check_backend_can_score(OnlyScore(), role="compressor")
    check_backend_can_score(_CharScorer())  # has all three: no error


def test_a_prompt_without_chat_parts_is_refused(tmp_path):
    from compressbench.core.prompts import Prompt

    text_only = Prompt(name="scorer-like", id="x", text="{context}")
    with pytest.raises(UsageError, match="prompt 'scorer-like' has no chat parts"):
        predict_loglik(_CharScorer(), _mc_example(), "z", prompt=text_only)
    own = Prompt(name="own", id="own-1", user="N={compression} Q={question}", completion="{compression}|{question}|A:")
    pred = predict_loglik(_CharScorer(), _mc_example(), "zz", prompt=own)
    assert pred.prompt_id == "own-1"
    # a prompt by file path, with only some placeholders
    f = tmp_path / "p.yaml"
    f.write_text("user: 'Q: {question}'\ncompletion: 'Q: {question} A:'\n", encoding="utf-8")
    backend = _CharScorer()
    predict_loglik(backend, _mc_example(), "ignored", prompt=str(f))
    assert backend.calls[0][1] == [f"Q: {_Q} A:"]


def test_messages_defaults_and_pass_through_found_by_mutation_testing():
    from compressbench.core.errors import BackendError
    from compressbench.measure.predict_loglik import LoglikPrediction, predict_loglik_batch
    from compressbench.core.prompts import Prompt

    class Nameless:  # a scorer without a name: messages fall back to its repr / class name
        def score_matrix(self, prefixes, continuations):
            return [[-1.0]]

        def score(self, prefixes, continuations):
            return []

        def count_tokens(self, texts):
            return [1 for _ in texts]

    ex = _mc_example()
    with pytest.raises(BackendError) as err:
        predict_loglik(Nameless(), ex, "z")
    assert str(err.value) == "Nameless: score_matrix returned shape (1, 1), expected (1, 4)"
    with pytest.raises(UsageError) as err:
        resolve_prompt_format(Nameless(), "chat")
    assert str(err.value).startswith("backend <") and "Nameless object at" in str(err.value)
    assert str(err.value).endswith("cannot render a chat template for scoring; use prompt_format 'completion' (or 'auto')")
    with pytest.raises(UsageError) as err:
        resolve_prompt_format(Nameless(), "json")
    assert str(err.value) == "prompt_format must be one of auto, chat, completion, got 'json'"

    class OnlyScore:
        def score(self, prefixes, continuations):
            return []

    with pytest.raises(UsageError) as err:
        check_backend_can_score(OnlyScore())
    assert str(err.value).startswith("predictor <") and "OnlyScore object at" in str(err.value)
    assert str(err.value).endswith("cannot score continuations (no score_matrix, count_tokens); "
                                   "use predictor_mode: generate for it")
    with pytest.raises(UsageError) as err:
        predict_loglik(_CharScorer(), ex, "z", prompt=Prompt(name="t", id="t", text="{context}"))
    assert str(err.value) == ("prompt 't' has no chat parts; the loglik predictor prompt needs 'user' (and a "
                              "'completion' part for base models); see prompts/predict_loglik.yaml")

    # a chat_prefix without has_chat_template: not a chat backend
    class PrefixOnly(_CharScorer):
        def __init__(self):
            super().__init__()
            self.chat_prefix = lambda msgs: "never"

    assert resolve_prompt_format(PrefixOnly()) == "completion"

    # acc picks the highest total wherever it is, not the first option
    class Fixed(_CharScorer):
        def score_matrix(self, prefixes, continuations):
            return [[-3.0, -1.0, -2.0]]

    three = Example(id="t", context="c", question="q", answers=("B",), options=("aaa", "bbb", "c"))
    pred = predict_loglik(Fixed(), three, "z")
    assert (pred.choice, pred.choice_norm) == (1, 1)  # per char: -1, -1/3, -2
    assert choice_scores(pred, three) == (1.0, 1.0)
    with pytest.raises(UsageError, match="example 'open': acc/acc_norm need a multiple-choice prediction"):
        choice_scores(pred, Example(id="open", context="c", question="q", answers=("x",), reference="x"))
    assert pred.as_dict()["prompt_id"] == load_prompt("predict_loglik").id
    # open question: format and prompt id recorded too
    own = Prompt(name="own", id="own-7", user="{question}", completion="{compression} {question} =")
    opened = predict_loglik(_CharScorer(chat=True), Example(id="o", context="c", question="q?", answers=("4",),
                                                            reference="4"), "two plus two", prompt=own,
                            prompt_format="completion")
    assert (opened.prompt_format, opened.prompt_id) == ("completion", "own-7")
    # the batch passes its prompt and format to every pair
    backend = _CharScorer(chat=True)
    preds = predict_loglik_batch(backend, [ex, ex], ["a", "b"], prompt=own, prompt_format="completion")
    assert [p.prompt_id for p in preds] == ["own-7", "own-7"] and {p.prompt_format for p in preds} == {"completion"}
    assert [c[1] for c in backend.calls] == [[f"a {ex.question} ="], [f"b {ex.question} ="]]
    chat = predict_loglik_batch(backend, [ex], ["a"])
    assert chat[0].prompt_format == "chat" and chat[0].prompt_id == load_prompt("predict_loglik").id
    assert isinstance(chat[0], LoglikPrediction)
