"""The known-information task (dataset kind ``known_info``), the ``keep:k`` oracle baseline and
retained bits. Expected values are worked out by hand from the task's definition."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from compressbench.measure.baselines import baseline_compression, keep_count
from compressbench.data import load_dataset
from compressbench.data.known_info import (
    CLOSING,
    OPENING,
    SLOT_VALUES,
    generate_known_info,
    keep_slots,
    retained_bits,
    retained_slots,
)
from compressbench.core.errors import ConfigError, DataError


def _strip_slots(context: str) -> str:
    return re.sub(r"The \w+ is \w+\. ", "", context)


def test_every_context_is_the_same_template_with_k_slot_sentences():
    exs = load_dataset({"kind": "known_info", "n_contexts": 30, "n_slots": 3, "n_values": 4, "seed": 5})
    assert len(exs) == 30 and len({e.id for e in exs}) == 30
    for e in exs:
        slots = e.metadata["slots"]
        assert list(slots) == ["colour", "animal", "city"]  # same slots, same order everywhere
        expected = " ".join([OPENING, *(f"The {s} is {v}." for s, v in slots.items()), CLOSING])
        assert e.context == expected
        assert _strip_slots(e.context) == f"{OPENING} {CLOSING}"  # identical filler, nothing else
        assert e.metadata["info_bits"] == pytest.approx(3 * 2.0)  # K log2 V = 3 x 2 bits
        # no identifiers: no digits, and no capitalised word but sentence starts and the city value
        assert not re.search(r"\d", e.context)


def test_question_is_multiple_choice_over_all_values_of_one_slot():
    exs = generate_known_info(n_contexts=40, n_slots=4, n_values=5, seed=2)
    for e in exs:
        slot = e.metadata["asked_slot"]
        assert e.question == f"What is the {slot} in the record?"
        assert e.options == SLOT_VALUES[slot][:5]  # all V values, in a fixed order
        assert e.options["ABCDE".index(e.answers[0])] == e.metadata["slots"][slot] == e.reference
        assert not any(v in e.question for v in e.options)


def test_seeded_and_values_roughly_uniform():
    a = generate_known_info(n_contexts=50, seed=3)
    assert a == generate_known_info(n_contexts=50, seed=3)
    assert a != generate_known_info(n_contexts=50, seed=4)
    big = generate_known_info(n_contexts=4000, n_slots=2, n_values=4, seed=0)
    counts = Counter(e.metadata["slots"]["colour"] for e in big)
    assert set(counts) == set(SLOT_VALUES["colour"][:4])
    # uniform: each of 4 values ~1000 +- 3 sd (sd = sqrt(4000 * 1/4 * 3/4) ~ 27)
    assert all(abs(c - 1000) < 90 for c in counts.values())
    # independent slots: the joint of two slots is ~ uniform over 16 cells (250 each, sd ~ 15)
    joint = Counter((e.metadata["slots"]["colour"], e.metadata["slots"]["animal"]) for e in big)
    assert len(joint) == 16 and all(abs(c - 250) < 60 for c in joint.values())


@pytest.mark.parametrize(("spec", "match"), [
    ({"kind": "known_info", "n_slots": 0}, r"n_slots must be an integer in \[1, 8\]"),
    ({"kind": "known_info", "n_values": 9}, r"n_values must be an integer in \[2, 8\]"),
    ({"kind": "known_info", "n_contexts": 0}, r"n_contexts must be an integer in \[1,"),
    ({"kind": "known_info", "path": "x.jsonl"}, r"generated: drop 'path'"),
    ({"kind": "known_info", "n_slot": 2}, r"did you mean 'n_slots'"),
])
def test_bad_specs_say_what_is_wrong(spec, match):
    with pytest.raises(DataError, match=match):
        load_dataset(spec)


def test_keep_k_keeps_the_first_k_slot_sentences_verbatim():
    e = generate_known_info(n_contexts=2, n_slots=4, n_values=4, seed=0)[0]
    s = e.metadata["slots"]
    assert keep_count("keep:2") == 2 and keep_count("keep:x") is None and keep_count("truncate:4") is None
    assert baseline_compression("keep:2", e.context, example=e) == (
        f"The colour is {s['colour']}. The animal is {s['animal']}.")
    assert baseline_compression("keep:0", e.context, example=e) == ""
    assert baseline_compression("keep:9", e.context, example=e) == " ".join(
        f"The {k} is {v}." for k, v in s.items())  # k > K keeps all K
    for k in range(5):
        assert retained_bits(e, keep_slots(e, k)) == pytest.approx(2.0 * k)  # k x log2 4
    assert retained_bits(e, e.context) == pytest.approx(8.0)
    with pytest.raises(ConfigError, match="only on the known_info"):
        baseline_compression("keep:1", "some text")
    other = load_dataset({"kind": "synthetic", "n_patients": 2, "n_questions_per_patient": 1})[0]
    with pytest.raises(ConfigError, match="only on the known_info"):
        baseline_compression("keep:1", other.context, example=other)


def test_retained_slots_by_exact_match():
    e = generate_known_info(n_contexts=1, n_slots=3, n_values=4, seed=0)[0]
    s = e.metadata["slots"]
    wrong_colour = next(v for v in SLOT_VALUES["colour"][:4] if v != s["colour"])
    assert retained_slots(e, "") == ()
    assert retained_slots(e, f"It was {s['city'].upper()} and {s['animal']}!") == ("animal", "city")
    # a wrong value is not retained; naming two candidates does not pin the slot down
    assert retained_slots(e, f"colour: {wrong_colour}") == ()
    assert retained_slots(e, f"colour {s['colour']} or {wrong_colour}") == ()
    # whole words only: the value inside a longer word does not count
    assert retained_slots(e, f"x{s['animal']}y") == ()
    # a value of the same slot beyond the first V does not count as naming a candidate
    beyond = SLOT_VALUES["colour"][5]
    assert retained_slots(e, f"{s['colour']}, not {beyond}") == ("colour",)
    assert retained_bits(e, f"{s['colour']} {s['city']}") == pytest.approx(2 * math.log2(4))


@pytest.mark.slow
def test_keep_k_mi_matches_the_known_bits_with_smollm2(smollm2):
    """With keep:k compressions of the default task and the real SmolLM2 as scorer (the demo's
    query-agnostic scoring prompt), the MI estimate is within 0.5 bits of k log2 V wherever
    k log2 V <= log2 N - 2, and grows with k. (Measured: 0.96, 1.97, 2.92, 3.68 bits for k = 1..4.)"""
    from compressbench.data.known_info import DEFAULT_N_SLOTS
    from compressbench.measure.scoring import score_mi

    exs = generate_known_info()  # the defaults (the demo's task)
    n, n_values = len(exs), exs[0].metadata["n_values"]
    bits = []
    for k in range(DEFAULT_N_SLOTS + 1):
        est = score_mi(smollm2, exs, [[keep_slots(e, k)] for e in exs], prompt="mi_score_agnostic", n_boot=0)
        known = k * math.log2(n_values)
        assert est.ceiling_bits == pytest.approx(math.log2(n))
        if known <= math.log2(n) - 2:
            assert abs(est.bits - known) <= 0.5, (k, est.bits, known)
        bits.append(est.bits)
    assert bits[0] == 0.0
    assert all(b > a for a, b in zip(bits, bits[1:])), bits
    assert bits[-1] < math.log2(n)  # the whole ladder stays below the ceiling


# --- found by mutation testing: bounds, defaults and messages of the generator and the slot readers


def test_generator_bounds_defaults_and_messages():
    from compressbench.core.types import Example

    assert len(generate_known_info(n_contexts=3, n_slots=8, n_values=8, seed=1)) == 3  # both upper bounds allowed
    for kwargs, msg in (({"n_slots": True}, "known_info n_slots must be an integer in [1, 8], got True"),
                        ({"n_values": 1}, "known_info n_values must be an integer in [2, 8], got 1"),
                        ({"n_contexts": 100_001}, "known_info n_contexts must be an integer in [1, 100000], got 100001"),
                        ({"seed": True}, "known_info seed must be an integer, got True"),
                        ({"seed": "1"}, "known_info seed must be an integer, got '1'")):
        with pytest.raises(DataError) as err:
            generate_known_info(**kwargs)
        assert str(err.value) == msg
    default = generate_known_info(n_contexts=2)
    assert default == generate_known_info(n_contexts=2, seed=0)  # the documented default seed
    assert all(e.dataset == "known_info" and e.metadata["seed"] == 0 for e in default)
    assert [e.id for e in default] == ["known-s0-c0000", "known-s0-c0001"]
    named = generate_known_info(n_contexts=2, seed=7, dataset="ki-7")
    assert all(e.dataset == "ki-7" and e.metadata["seed"] == 7 for e in named)
    # keep:k's k must be a non-negative integer (not a bool)
    e = default[0]
    for k, shown in ((-1, "-1"), (True, "True"), (1.0, "1.0")):
        with pytest.raises(DataError) as err:
            keep_slots(e, k)
        assert str(err.value) == f"keep:k needs an integer k >= 0, got {shown}"
    # slots are read from the metadata; an example without them is refused by name
    for meta in ({}, {"slots": {}}, {"slots": ["colour"]}):
        bare = Example(id="plain-1", context="c", question="q", metadata=meta)
        with pytest.raises(DataError) as err:
            keep_slots(bare, 1)
        assert str(err.value) == "example 'plain-1' is not a known_info example (its metadata has no 'slots')"
    # without n_values in the metadata every listed value of a slot is a candidate (log2 8 = 3 bits)
    nv = Example(id="x", context="c", question="q", metadata={"slots": {"colour": "red", "animal": "shark"}})
    assert retained_slots(nv, "red, and a shark") == ("colour", "animal")
    assert retained_slots(nv, "red or brown") == ()  # brown is the 8th colour: a second candidate
    assert retained_bits(nv, "red") == pytest.approx(3.0)
