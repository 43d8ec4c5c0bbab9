"""A synthetic task whose information content is known exactly (dataset kind ``known_info``).

Every context is the same template: the same opening and closing filler (no names, dates or
other identifiers) around K *slot sentences*, ``"The <slot> is <value>."``, always in the same
slot order. Each slot's value is drawn independently and uniformly from that slot's V values,
so a context holds exactly ``K * log2(V)`` bits, and a compression that keeps k slot values
verbatim holds at most ``k * log2(V)`` bits about it.

One question per context, about one slot drawn uniformly from the K slots: "What is the
<slot> in the record?", multiple choice over **all** V values of that slot (options in a fixed
order, so a letter says nothing by itself). Chance accuracy is ``1 / V``; a compression that
keeps the first k slot sentences (the ``keep:k`` baseline) answers right with probability
``k/K + (1 - k/K) / V``.

Everything is drawn from ``random.Random(seed)``. Example ids: ``known-s<seed>-c<index, 4
digits>``. ``metadata`` holds ``slots`` (slot -> value, in slot order), ``asked_slot``,
``n_values`` and ``info_bits`` (K log2 V).

Worked example (K = 2, V = 4)::

    >>> ex = generate_known_info(n_contexts=1, n_slots=2, n_values=4, seed=0)[0]
    >>> [s for s in slot_sentences(ex)]  # doctest: +SKIP
    ['The colour is green.', 'The animal is horse.']
    >>> retained_slots(ex, "The colour is green.")  # doctest: +SKIP
    ('colour',)
    >>> retained_bits(ex, "The colour is green.")  # one of two slots kept: log2 4 = 2 bits
    2.0
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from typing import Any

from compressbench.core.errors import DataError
from compressbench.core.types import Example

#: Slot name -> its possible values (the first V are used). Values are distinct across slots, never
#: part of the filler or the question, and each is one common word.
SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "blue", "green", "yellow", "purple", "black", "white", "brown"),
    "animal": ("otter", "horse", "eagle", "tiger", "rabbit", "wolf", "camel", "shark"),
    "city": ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Delhi", "Boston"),
    "fruit": ("apple", "banana", "cherry", "lemon", "mango", "grape", "peach", "plum"),
    "metal": ("iron", "copper", "silver", "gold", "zinc", "tin", "lead", "nickel"),
    "instrument": ("piano", "violin", "guitar", "drum", "flute", "harp", "trumpet", "cello"),
    "tree": ("oak", "pine", "birch", "maple", "cedar", "willow", "elm", "palm"),
    "sport": ("tennis", "soccer", "golf", "rugby", "hockey", "boxing", "cricket", "skiing"),
}
SLOTS: tuple[str, ...] = tuple(SLOT_VALUES)
MAX_VALUES = min(len(v) for v in SLOT_VALUES.values())

#: The filler shared by every context, before and after the slot sentences.
OPENING = "Here is a short record of random choices."
CLOSING = "End of record."


def slot_sentence(slot: str, value: str) -> str:
    """The sentence that states one slot's value: ``"The <slot> is <value>."``."""
    return f"The {slot} is {value}."


def question_text(slot: str) -> str:
    return f"What is the {slot} in the record?"


def known_info_context(values: Mapping[str, str]) -> str:
    """The context for slot values (in the given slot order): filler, slot sentences, filler."""
    return " ".join([OPENING, *(slot_sentence(s, v) for s, v in values.items()), CLOSING])


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise DataError(f"known_info {name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


#: Defaults (the demo's): 4 slots of 2 values = 4 bits per context; with N = 32 contexts every rung of
#: the keep:k ladder (1, 2, 3 bits) and the full context (4 bits) stay below the log2 32 = 5-bit ceiling.
DEFAULT_N_CONTEXTS, DEFAULT_N_SLOTS, DEFAULT_N_VALUES = 32, 4, 2


def generate_known_info(n_contexts: int = DEFAULT_N_CONTEXTS, n_slots: int = DEFAULT_N_SLOTS,
                        n_values: int = DEFAULT_N_VALUES, seed: int = 0,
                        dataset: str = "known_info") -> list[Example]:
    """``n_contexts`` examples with ``n_slots`` slots of ``n_values`` values each (see module doc).

    Deterministic for given arguments; raises DataError on impossible sizes.
    """
    _check_int("n_contexts", n_contexts, 1, 100_000)
    _check_int("n_slots", n_slots, 1, len(SLOTS))
    _check_int("n_values", n_values, 2, MAX_VALUES)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataError(f"known_info seed must be an integer, got {seed!r}")
    rng = random.Random(seed)
    slots = SLOTS[:n_slots]
    bits = n_slots * math.log2(n_values)
    letters = "ABCDEFGH"
    out: list[Example] = []
    for i in range(n_contexts):
        values = {s: rng.choice(SLOT_VALUES[s][:n_values]) for s in slots}
        asked = rng.choice(slots)
        options = SLOT_VALUES[asked][:n_values]
        out.append(Example(
            id=f"known-s{seed}-c{i:04d}", context=known_info_context(values), question=question_text(asked),
            answers=(letters[options.index(values[asked])],), options=options, reference=values[asked],
            dataset=dataset,
            metadata={"slots": dict(values), "asked_slot": asked, "n_values": n_values, "info_bits": bits,
                      "seed": seed},
        ))
    return out


def _slots_of(example: Example) -> dict[str, str]:
    slots = example.metadata.get("slots") if example.metadata else None
    if not isinstance(slots, Mapping) or not slots:
        raise DataError(f"example {example.id!r} is not a known_info example (its metadata has no 'slots')")
    return dict(slots)


def slot_sentences(example: Example) -> list[str]:
    """The example's slot sentences, in slot order (what ``keep:k`` keeps the first k of)."""
    return [slot_sentence(s, v) for s, v in _slots_of(example).items()]


def keep_slots(example: Example, k: int) -> str:
    """The ``keep:k`` oracle compression: the first k slot sentences, verbatim, space-joined."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise DataError(f"keep:k needs an integer k >= 0, got {k!r}")
    return " ".join(slot_sentences(example)[:k])


def _mentions(text: str, value: str) -> bool:
    return re.search(rf"(?<![A-Za-z]){re.escape(value)}(?![A-Za-z])", text, re.IGNORECASE) is not None


def retained_slots(example: Example, compression: str) -> tuple[str, ...]:
    """The slots whose value the compression retains, by exact (whole-word, case-insensitive) match.

    A slot counts as retained when the compression names its true value and no other value of
    that slot (a compression that lists several candidates does not pin the slot down).
    """
    n_values = int(example.metadata.get("n_values", MAX_VALUES))
    kept = []
    for slot, value in _slots_of(example).items():
        named = [v for v in SLOT_VALUES[slot][:n_values] if _mentions(compression, v)]
        if named == [value]:
            kept.append(slot)
    return tuple(kept)


def retained_bits(example: Example, compression: str) -> float:
    """Bits of the context the compression retains verbatim: (retained slots) x log2 V."""
    n_values = int(example.metadata.get("n_values", MAX_VALUES))
    return len(retained_slots(example, compression)) * math.log2(n_values)


def is_known_info(example: Example) -> bool:
    """Whether the example carries known-information slots (so retained bits are defined)."""
    return bool(example.metadata) and isinstance(example.metadata.get("slots"), Mapping)


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``known_info`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return generate_known_info(seed=spec.get("seed") or 0, dataset=dataset, **opts)


__all__ = [
    "CLOSING", "MAX_VALUES", "OPENING", "SLOTS", "SLOT_VALUES", "generate_known_info", "is_known_info",
    "keep_slots", "known_info_context", "retained_bits", "retained_slots", "slot_sentence", "slot_sentences",
]
