"""The scorer's shared prefill, charged by one rule (issue 19, item 3): each scoring prefix is
prefilled once per scoring round for every group of the dataset, and its prefill is charged in
equal shares to the rows (group, example) scored after it, whichever of them the model computed in
this call and whichever came from the cache (``model_work.share_prefills`` through
``CachedModel.logp_tensors``; ``cost.role_cost`` charges ``prefill / n`` for ``[P, S1, S2, n]``).

A fake scorer (no model) logs every prefix it prefills; FLOPs are checked against the cost
formulas written out by hand here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compressbench.core.prompts import load_prompt
from compressbench.core.types import Example, ModelInfo
from compressbench.engine.caching import CachedModel
from compressbench.engine.model_work import ScoreJob
from compressbench.engine.records import RoleUsage
from compressbench.engine.store import Cache
from compressbench.measure.cost import role_cost

N_PARAMS, N_LAYERS, D_ATTN = 1000, 2, 8  # 2 heads x head_dim 4
INFO = ModelInfo("fake", n_params=N_PARAMS, n_layers=N_LAYERS, n_heads=2, head_dim=4)


def prefill_by_hand(p: int) -> float:
    """2 N per token plus, per layer, QK^T and AV over the t <= p positions each token attends to."""
    return float(sum(2 * N_PARAMS + 4 * N_LAYERS * D_ATTN * t for t in range(1, p + 1)))


def continuation_by_hand(p: int, length: int) -> float:
    return float(sum(2 * N_PARAMS + 4 * N_LAYERS * D_ATTN * t for t in range(p + 1, p + length + 1)))


class FakeScorer:
    """Scores with a fixed rule; every prefix it is asked to run is one prefill (``prefilled``)."""

    name = "fake"

    def __init__(self) -> None:
        self.prefilled: list[str] = []

    def score_matrix(self, prefixes: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        self.prefilled.extend(prefixes)
        return np.array([[-0.25 * (1 + len(c.split())) - 0.01 * (len(p) % 5) for c in continuations]
                         for p in prefixes])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def info(self) -> ModelInfo:
        return INFO


class OneModel:
    """The executor and registry CachedModel needs, holding one backend in this process."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def run(self, model: str, fn: Any, *args: Any) -> Any:
        return fn(self.backend, *args)

    def identity(self, name: str) -> dict[str, str]:
        return {"backend": "fake", "model": name}

    def refresh_if_loaded(self, name: str) -> None:
        pass


PROMPT = load_prompt("mi_score")
EXS = [Example(id=f"e{i}", context=f"record {i}: " + "word " * (3 + 2 * i), question="what is kept?")
       for i in range(4)]
# Three groups of one dataset (M = 2). C lost example 3 (its compression failed): it scores three
# examples, so prefix 3 is shared by A and B only.
A = ScoreJob(EXS, [[f"a{i} one", f"a{i} one two"] for i in range(4)])
B = ScoreJob(EXS, [[f"b{i} x y z", f"b{i} x y z"] for i in range(4)])  # M identical copies: scored once
C = ScoreJob(EXS[:3], [[f"c{i}", f"c{i} w"] for i in range(3)])
NEG = [None, None, None]


def _model(tmp: Path, backend: FakeScorer | None = None) -> tuple[CachedModel, FakeScorer]:
    backend = backend or FakeScorer()
    one = OneModel(backend)
    return CachedModel("scorer", one, one, Cache(tmp), overflow="fail"), backend  # type: ignore[arg-type]


def _rows(outcomes: Sequence[Any]) -> list[list[dict[str, Any] | None]]:
    return [list(o.usage) for o in outcomes]


def test_a_resume_records_what_one_call_records_and_the_shares_add_up_to_the_prefills_done(tmp_path):
    together, fresh = _model(tmp_path / "a")
    res = together.logp_tensors([A, B, C], PROMPT, 2, NEG)
    # one prefill per distinct prefix in the call
    prefixes = [PROMPT.render_text(context=e.context, question=e.question) for e in EXS]
    assert sorted(fresh.prefilled) == sorted(prefixes)

    # resumed: A was scored in an earlier run (alone), then A (from the cache), B and C in one round
    resumed, again = _model(tmp_path / "b")
    alone = resumed.logp_tensors([A], PROMPT, 2, [None])
    assert all(len(u["shared_prefix_calls"][0]) == 3 for u in alone[0].usage)  # alone: [P, S1, S2], all of it
    n_alone = len(again.prefilled)
    res2 = resumed.logp_tensors([A, B, C], PROMPT, 2, NEG)
    assert len(again.prefilled) - n_alone == 4  # B and C needed every prefix once more
    assert _rows(res2) == _rows(res)  # every group's usage, A's included, equals the one-call run's
    for x, y in zip(res, res2):
        np.testing.assert_array_equal(x.logp, y.logp)
        assert (x.n_tokens, x.errors) == (y.n_tokens, y.errors)

    # the rule, by hand: prefix l is shared by the groups that score example l (3, 3, 3 and 2)
    n_share = [3, 3, 3, 2]
    for g, o in enumerate(res):
        for i, u in enumerate(o.usage):
            p, s1, s2, n = u["shared_prefix_calls"][0]
            assert (p, n) == (len(prefixes[i].split()), n_share[i])
            job = (A, B, C)[g]
            # every example's distinct compressions (B's two copies once) after each prefix
            lens = [len(z.split()) for row in job.texts for z in dict.fromkeys(row)]
            assert (s1, s2) == (sum(lens), sum(x * x for x in lens))
            assert u["n_prompt_tokens"] == p + s1  # tokens are not split: each row reads its prefix

    # FLOPs, as the sweep writes them into records (RoleUsage -> role_cost), against a hand count:
    # the shares of each prefill sum to the one prefill done, and each row pays its continuations
    total = sum(role_cost("scorer", RoleUsage.from_dict(u).as_dict(), INFO).flops for o in res for u in o.usage)
    hand = sum(prefill_by_hand(len(p.split())) for p in fresh.prefilled)
    for job in (A, B, C):
        for p in prefixes[:len(job.exs)]:
            hand += sum(continuation_by_hand(len(p.split()), len(z.split()))
                        for row in job.texts for z in dict.fromkeys(row))
    assert total == pytest.approx(hand, rel=1e-12)
    # a row's own charge: its share of the prefill plus its continuations
    u = res[2].usage[0]
    p0 = len(prefixes[0].split())
    own = prefill_by_hand(p0) / 3 + sum(continuation_by_hand(p0, len(z.split())) for row in C.texts
                                          for z in dict.fromkeys(row))
    assert role_cost("scorer", u, INFO).flops == pytest.approx(own, rel=1e-12)


def test_groups_sharing_one_cache_entry_get_the_same_usage_fresh_and_cached(tmp_path):
    # Two groups with the same compressions (e.g. a compressor that ignores temperature) share one
    # cache entry: whichever wrote it, a resumed run must record what the first run recorded.
    twin = ScoreJob(list(A.exs), [list(r) for r in A.texts])
    model, backend = _model(tmp_path)
    first = model.logp_tensors([A, twin, B], PROMPT, 2, NEG)
    assert _rows(first)[0] == _rows(first)[1]
    assert all(u["shared_prefix_calls"][0][3] == 3 for u in first[0].usage)
    n = len(backend.prefilled)
    again = model.logp_tensors([A, twin, B], PROMPT, 2, NEG)
    assert len(backend.prefilled) == n  # all from the cache
    assert _rows(again) == _rows(first)


def test_an_entry_without_its_prefixes_is_scored_again(tmp_path):
    model, backend = _model(tmp_path)
    first = model.logp_tensors([A, B], PROMPT, 2, [None, None])
    cache = Cache(tmp_path)
    key = model._logp_key(A.exs, A.texts, PROMPT)
    old = {k: v for k, v in cache.get_json(key).items() if k != "prefixes"}  # as written before this rule
    old["usage"] = [{**u, "shared_prefix_calls": [u["shared_prefix_calls"][0][:3] + [0]]} for u in old["usage"]]
    cache.put_json(key, old)
    n = len(backend.prefilled)
    again = model.logp_tensors([A, B], PROMPT, 2, [None, None])
    assert len(backend.prefilled) == n + 4  # A was scored again (its prefixes, once each)
    assert _rows(again) == _rows(first)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_role_cost_charges_one_nth_of_a_shared_prefill(n):
    p, lens = 12, [3, 4]
    call = [p, sum(lens), sum(x * x for x in lens)] + ([] if n == 1 else [n])
    usage = {"n_prompt_tokens": p + sum(lens), "n_completion_tokens": 0, "n_calls": 1, "shared_prefix_calls": [call]}
    expect = prefill_by_hand(p) / n + sum(continuation_by_hand(p, x) for x in lens)
    assert role_cost("scorer", usage, INFO).flops == pytest.approx(expect, rel=1e-12)
    # 0: no prefill charged (nothing was scored after it; older records: paid in another record)
    none = {**usage, "shared_prefix_calls": [call[:3] + [0]]}
    assert role_cost("scorer", none, INFO).flops == pytest.approx(sum(continuation_by_hand(p, x) for x in lens))
