"""compressbench.agent.research: the generated benchmark, BM25 search, the agent loop, runs, reports, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from compressbench.cli.main import cli
from compressbench.agent.step import CompressionStep
from compressbench.core.errors import DataError, UsageError
from compressbench.measure.metrics import numeric_match
from compressbench.agent.research import (
    AgentSettings,
    BM25Search,
    Document,
    ResearchAgent,
    generate_benchmark,
    load_documents,
    load_questions,
    parse_reply,
)
from compressbench.agent.research.config import config_from_dict, default_config_path
from compressbench.agent.research.corpus import documents_to_jsonl, questions_to_jsonl
from compressbench.agent.research.report import is_research_run, plot_research, render
from compressbench.agent.research.run import run_research
from compressbench.engine.records import ResearchAnswerRecord as AnswerRecord
from compressbench.engine.records import ResearchRoundMIRecord as RoundMIRecord
from compressbench.engine.records import ResearchRoundRecord as RoundRecord
from compressbench.engine.records import read_research_records
from compressbench.engine.records import research_record_from_dict as record_from_dict
from compressbench.core.types import Generation, ModelInfo, Sample, Usage

# --------------------------------------------------------------------------- the generated benchmark


def test_benchmark_is_seeded_and_every_gold_fact_is_in_its_gold_documents():
    docs, qs = generate_benchmark(seed=3, n_companies=8, n_questions=20)
    again = generate_benchmark(seed=3, n_companies=8, n_questions=20)
    assert (docs, qs) == again
    assert generate_benchmark(seed=4, n_companies=8, n_questions=20)[0] != docs
    by_id = {d.id: d for d in docs}
    assert len(by_id) == len(docs)
    assert {q.id for q in qs} == {f"rq-s3-{k:03d}" for k in range(20)}
    assert {len(q.gold_doc_ids) for q in qs} == {2, 3}  # multi-hop: 2 or 3 documents each
    for q in qs:
        (gold,) = q.example.answers
        holders = [d.id for d in docs if gold in d.content]
        # the answer is stated in a gold document; a name also appears in its board distractor
        # (the same person in another role), a number nowhere else
        assert any(h in q.gold_doc_ids for h in holders), (q.text, gold, holders)
        others = [h for h in holders if h not in q.gold_doc_ids]
        assert others == [] if q.metric == "numeric" else all(h.startswith("board-") for h in others), others
        if q.metric == "numeric":
            # no other document states a number that numeric_match would accept (distractors are >1% off)
            for d in docs:
                if d.id not in q.gold_doc_ids and not d.id.startswith(("filing", "history")):
                    assert not numeric_match(d.text, gold), (q.text, d.id)
    # the templates all appear, and distractors share names with the real documents
    assert {q.text.split()[0] for q in qs} >= {"What", "How", "In", "Who"}
    ceo_docs = [d for d in docs if d.id.startswith("ceo-")]
    for d in ceo_docs:
        ceo = d.text.split(" is the chief")[0]
        assert any(ceo in b.text for b in docs if b.id.startswith("board-"))  # a distractor names them too
    with pytest.raises(DataError, match="n_questions must be between"):
        generate_benchmark(0, 4, 1000)


# --------------------------------------------------------------------------- corpus and search


def test_bm25_ranks_by_term_weight_and_skips_unrelated_documents():
    docs = [Document("a", "the quarterly revenue of Vantrix rose"), Document("b", "Vantrix Vantrix Vantrix board"),
            Document("c", "weather in Porto"), Document("d", "revenue revenue revenue grew")]
    s = BM25Search(docs)
    # "Vantrix" is in 2 of 4 documents, "revenue" in 2 of 4: equal idf; b has tf 3 for Vantrix
    assert [d.id for d in s("Vantrix", 4)] == ["b", "a"]
    assert [d.id for d in s("Vantrix revenue", 1)] == ["a"]  # the only document with both terms
    assert s("Porto", 10) == [docs[2]]
    assert s("nothing matches here xyz", 3) == [] and s("the of and", 3) == []
    with pytest.raises(UsageError, match="k must be"):
        s("x", 0)
    with pytest.raises(DataError, match="holds no documents"):
        BM25Search([])


def test_bring_your_own_folder_and_questions(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Plain text document about Graz.")
    (folder / "sub" / "b.md").write_text("# Heading B\nBody of b mentions Brno.\n")
    (folder / "more.jsonl").write_text('{"id": "j1", "text": "JSON doc one", "title": "T1"}\n\n'
                                       '{"id": "j2", "text": "JSON doc two"}\n')
    (folder / ".hidden.txt").write_text("skip me")
    (folder / "image.png").write_bytes(b"\x89PNG")
    docs = load_documents(folder)
    assert [(d.id, d.title) for d in docs] == [("a.txt", ""), ("j1", "T1"), ("j2", ""), ("sub/b.md", "Heading B")]
    assert docs[3].text == "Body of b mentions Brno."
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"id": "x", "question": "Where?", "answers": ["Graz"]}\n'
                     '{"question": "How many?", "answers": "42", "metric": "numeric"}\n')
    qs = load_questions(qfile)
    assert [(q.id, q.metric, q.example.answers) for q in qs] == [("x", "f1", ("Graz",)), ("q2", "numeric", ("42",))]
    # round trip through the JSONL writers
    gdocs, gqs = generate_benchmark(0, 4, 5)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "docs.jsonl").write_text(documents_to_jsonl(gdocs))
    (tmp_path / "gq.jsonl").write_text(questions_to_jsonl(gqs))
    assert load_documents(tmp_path / "g") == gdocs
    assert [(q.id, q.text, q.example.answers, q.metric, q.gold_doc_ids) for q in load_questions(tmp_path / "gq.jsonl")] \
        == [(q.id, q.text, q.example.answers, q.metric, q.gold_doc_ids) for q in gqs]


@pytest.mark.parametrize("files, pattern", [
    ({}, "holds no documents"),
    ({"x.bin": "no"}, "holds no documents"),
    ({"a.txt": "   \n"}, "document 'a.txt' is empty"),
    ({"a.jsonl": '{"id": "1", "text": "ok"}\n{"id": "1", "text": "again"}\n'}, "appears twice"),
    ({"a.jsonl": '{"id": "1", "text": "ok"}\nnot json\n'}, "line 2 is not valid JSON"),
    ({"a.jsonl": '{"id": "1", "body": "x"}\n'}, "needs a string field 'text'"),
])
def test_bad_document_folders(tmp_path, files, pattern):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_documents(tmp_path)


def test_bad_questions_files(tmp_path):
    p = tmp_path / "q.jsonl"
    for text, pattern in [("", "holds no questions"), ('{"question": "q"}\n', "missing field 'answers'"),
                          ('{"answers": ["a"]}\n', "missing field 'question'"),
                          ('{"question": "q", "answers": ["a"], "metric": "judge"}\n', "cannot score|can score")]:
        p.write_text(text)
        with pytest.raises(DataError, match=pattern):
            load_questions(p)
    with pytest.raises(DataError, match="does not exist"):
        load_questions(tmp_path / "none.jsonl")


# --------------------------------------------------------------------------- reply parsing


@pytest.mark.parametrize("text, final, answer, queries", [
    ("ANSWER: $412.7 million", False, "$412.7 million", ()),
    ("SEARCH: Vantrix annual report\nsearch: Vantrix CEO\nSEARCH: third one", False, None,
     ("Vantrix annual report", "Vantrix CEO")),
    ('{"queries": ["a b", "c"]}', False, None, ("a b", "c")),
    ('{"answer": "Mira Halvorsen"}', False, "Mira Halvorsen", ()),
    ("I think it is 1956.", False, None, ()),
    ("I think it is 1956.", True, "I think it is 1956.", ()),
    ("SEARCH: more please", True, None, ("more please",)),
    ("", True, None, ()),
    ("1. Search: first query\n2. Search: first query", False, None, ("first query",)),
])
def test_parse_reply(text, final, answer, queries):
    rep = parse_reply(text, final=final)
    assert rep.answer == answer and rep.queries == queries


# --------------------------------------------------------------------------- the agent with scripted models


class ScriptedPredictor:
    """A predictor double that follows a script by prompt kind and remembers every chat it saw.

    plan chats -> ``plan``; step chats -> ``step(chat_text)``; final chats -> ``final(chat_text)``.
    Usage: prompt = words of the chat, completion = words of the reply.
    """

    name = "scripted"

    def __init__(self, plan="SEARCH: annual report", step=lambda t: "ANSWER: none", final=lambda t: "ANSWER: none"):
        self.plan, self.step, self.final = plan, step, final
        self.seen: list[str] = []

    def generate(self, chats, params):
        out = []
        for chat in chats:
            text = "\n".join(m["content"] for m in chat)
            self.seen.append(text)
            if "Write up to" in text:
                reply = self.plan
            elif "This is the last step" in text:
                reply = self.final(text)
            else:
                reply = self.step(text)
            out.append(Generation((Sample(reply, "stop", len(reply.split())),), Usage(len(text.split()),
                                                                                     len(reply.split()))))
        return out

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def info(self):
        return ModelInfo(reference="scripted", n_params=2_000_000, n_layers=2, d_model=32, n_heads=2, head_dim=16)


def _number_after(text: str, marker: str) -> str | None:
    m = re.search(re.escape(marker) + r"[^$]*(\$[\d,.]+ million)", text)
    return m.group(1) if m else None


def _reader(text: str) -> str:
    """A 'perfect reader' for ceo_rev questions: find the company of the CEO in the notes, ask for
    its annual report, then read the revenue."""
    ceo = re.search(r"chief executive is (.+?)\?", text).group(1)
    m = re.search(re.escape(ceo) + r" is the chief executive officer of (.+?),", text)
    if not m:
        return "SEARCH: " + ceo
    company = m.group(1)
    rev = re.search(re.escape(company) + r" reported revenue of (\$[\d,.]+ million) for the fiscal year 2024", text)
    return f"ANSWER: {rev.group(1)}" if rev else f"SEARCH: {company} annual report 2024 revenue"


@pytest.fixture(scope="module")
def bench():
    docs, qs = generate_benchmark(seed=0, n_companies=12, n_questions=20)
    return docs, qs


def test_two_hop_question_in_the_uncompressed_arm(bench):
    docs, qs = bench
    q = next(q for q in qs if q.text.startswith("What was the 2024 revenue of the company whose"))
    pred = ScriptedPredictor(plan="nothing useful", step=_reader, final=_reader)
    agent = ResearchAgent(pred, BM25Search(docs), settings=AgentSettings(rounds=3, docs_per_query=3))
    ((ans, rounds),) = agent.run_batch([q])
    assert ans.arm == "uncompressed" and ans.error is None and ans.failure is None
    assert ans.answer == q.example.answers[0] and ans.score == 1.0 and ans.gold_recall == 1.0
    assert [r.round for r in rounds] == list(range(1, ans.n_rounds + 1)) and ans.n_rounds >= 2
    assert rounds[0].queries == (q.text,)  # no planned query parsed: the question itself
    assert rounds[1].queries[0].endswith("annual report 2024 revenue") and rounds[1].action in ("answer", "search")
    assert all(r.compressions == () for r in rounds)
    # the predictor read the raw documents
    ceo_doc = next(d for d in docs if d.id == q.gold_doc_ids[0])
    assert any(ceo_doc.text in seen for seen in pred.seen)
    # usage per round adds up to the answer's totals; dollars need a price
    assert ans.usage["predictor"].n_prompt_tokens == sum(r.usage["predictor"].n_prompt_tokens for r in rounds)
    assert ans.usage["predictor"].api_usd is None and ans.usage["predictor"].flops > 0
    all_ids = [i for r in rounds for i in r.doc_ids]
    assert len(all_ids) == len(set(all_ids)) == len(ans.doc_ids)  # no document read twice


def test_compressed_arm_reads_compressions_and_prices_the_predictor(bench):
    from compressbench.measure.cost import PriceTable

    docs, qs = bench
    gpt4o = PriceTable.load().lookup("gpt-4o")
    pred = ScriptedPredictor(plan="SEARCH: leadership", step=lambda t: "SEARCH: annual report 2024",
                             final=lambda t: "ANSWER: 1956")

    def head(context: str, query: str) -> str:
        return "NOTE " + " ".join(context.split()[:6])

    step = CompressionStep(head, name="head6")
    agent = ResearchAgent(pred, BM25Search(docs), compressor=step,
                          settings=AgentSettings(rounds=2, docs_per_query=2), predictor_price=gpt4o)
    results = agent.run_batch(qs[:3])
    assert [a.question_id for a, _ in results] == [q.id for q in qs[:3]]
    for (ans, rounds), q in zip(results, qs[:3]):
        assert ans.arm == "head6" and ans.n_rounds == 2 and ans.answer == "1956"
        assert rounds[0].queries == (q.text, "leadership")
        assert rounds[1].queries == ("annual report 2024",)
        for r in rounds:
            assert len(r.compressions) == len(r.doc_ids) > 0
            by_id = {d.id: d for d in docs}
            assert all(z == (head(by_id[i].content, q.text),) for i, z in zip(r.doc_ids, r.compressions))
        u = ans.usage["predictor"]
        assert u.n_calls == 3  # plan + decide + final
        assert u.api_usd == pytest.approx((u.n_prompt_tokens * 2.50 + u.n_completion_tokens * 10.00) / 1e6)
        assert ans.usage["compressor"].n_prompt_tokens is None  # a plain callable: unknown, not 0
    # the predictor saw the notes, never a raw document body
    final_chats = [s for s in pred.seen if "This is the last step" in s]
    assert final_chats and all("NOTE " in s for s in final_chats)
    some_doc = docs[0].text
    assert not any(some_doc in s for s in pred.seen)


def test_predictor_that_never_answers_is_a_recorded_failure(bench):
    docs, qs = bench
    pred = ScriptedPredictor(step=lambda t: "SEARCH: more", final=lambda t: "SEARCH: still more")
    ((ans, rounds),) = ResearchAgent(pred, BM25Search(docs), settings=AgentSettings(rounds=3)).run_batch([qs[0]])
    assert ans.failure == "no_answer" and ans.answer is None and ans.score == 0.0 and ans.error is None
    assert ans.n_rounds == 3 and [r.action for r in rounds] == ["search", "search", "search"]
    pred_empty = ScriptedPredictor(step=lambda t: "", final=lambda t: "   ")
    ((ans2, _),) = ResearchAgent(pred_empty, BM25Search(docs), settings=AgentSettings(rounds=2)).run_batch([qs[0]])
    assert ans2.failure == "no_answer"


def test_a_search_function_that_raises_fails_only_its_question(bench):
    docs, qs = bench
    bm25 = BM25Search(docs)

    def flaky(query: str, k: int):
        if "How many people" in query:
            raise ConnectionError("search service unreachable")
        return bm25(query, k)

    pred = ScriptedPredictor(plan="", step=lambda t: "ANSWER: 5", final=lambda t: "ANSWER: 5")
    results = ResearchAgent(pred, flaky, settings=AgentSettings(rounds=2)).run_batch(qs[:3])
    errs = {a.question_id: a.error for a, _ in results}
    bad = [q for q in qs[:3] if "How many people" in q.text]
    assert len(bad) == 1
    assert "search failed in round 1" in errs[bad[0].id] and "ConnectionError: search service unreachable" in errs[bad[0].id]
    assert all(errs[q.id] is None for q in qs[:3] if q is not bad[0])
    failed = next(a for a, _ in results if a.error)
    assert failed.score is None and failed.n_rounds == 1
    # a search that returns the wrong type is refused with a message saying what to return
    ((a, _),) = ResearchAgent(pred, lambda q, k: ["plain string"], settings=AgentSettings()).run_batch([qs[0]])
    assert "must return compressbench.agent.research.Document" in a.error


# --------------------------------------------------------------------------- runs, reports, plots


class FakeScorer:
    """A scorer double for MI: log p(z | x) = -1 when z's first word appears in x's text, else -5."""

    name = "fake-scorer"

    def score_matrix(self, prefixes, continuations):
        return np.array([[-1.0 if c.split()[0] in p else -5.0 for c in continuations] for p in prefixes])

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def info(self):
        return ModelInfo(reference="fake-scorer")


class FirstWordsBackend:
    """Compressor double: the document's title line (a unique name per document) as the note."""

    name = "titles"

    def generate(self, chats, params):
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            title = text.split("Document:\n", 1)[1].split("\n", 1)[0]
            out.append(Generation((Sample(title, "stop", len(title.split())),) * params.n,
                                  Usage(len(text.split()), len(title.split()) * params.n)))
        return out

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def info(self):
        return ModelInfo(reference="titles", n_params=1_000_000, n_layers=2, d_model=32, n_heads=2, head_dim=16)


def _factory(predictor):
    made = {"pred": predictor, "comp": FirstWordsBackend(), "scorer": FakeScorer()}

    def factory(kind, model, **options):
        return made[model]

    return factory


def _config(**over):
    raw = {"name": "t", "models": {"p": {"backend": "hf", "model": "pred"}, "c": {"backend": "hf", "model": "comp"},
                                   "s": {"backend": "hf", "model": "scorer"}},
           "predictor": "p", "predictor_price": "gpt-4o", "compressors": ["c", "truncate:5"], "scorer": "s",
           "benchmark": {"kind": "generated", "seed": 0, "n_companies": 8, "n_questions": 6}, "limit": 5,
           "rounds": 2, "docs_per_query": 2, "batch_size": 2, "mi_n_boot": 200,
           "predictor_mode": "generate", "planner": "model"}
    raw.update(over)
    return config_from_dict(raw)


def test_run_writes_typed_records_summary_and_resumes(tmp_path):
    pred = ScriptedPredictor(plan="SEARCH: annual report", step=lambda t: "SEARCH: history",
                             final=lambda t: "ANSWER: 1956")
    cfg = _config()
    res = run_research(cfg, tmp_path, backend_factory=_factory(pred))
    run = tmp_path / "t"
    assert res.run_dir == run and res.n_new_questions == 15 and is_research_run(run)
    recs = read_research_records(run)
    answers = [r for r in recs if isinstance(r, AnswerRecord)]
    assert sorted({a.arm for a in answers}) == ["c", "truncate:5", "uncompressed"] and len(answers) == 15
    rounds = [r for r in recs if isinstance(r, RoundRecord)]
    assert len(rounds) == 30 and {r.round for r in rounds} == {1, 2}
    # predictor_mode generate scores no options: usable bits are not measured (said, not invented)
    assert all(r["usable_bits"] is None and r["usable_note"].startswith("not measured: no question of this arm has "
                                                                       "scored options") for r in res.rows)
    mis = [r for r in recs if isinstance(r, RoundMIRecord)]
    assert sorted((m.arm, m.round) for m in mis) == [("c", 1), ("c", 2), ("truncate:5", 1), ("truncate:5", 2)]
    # round 1 MI of the title compressor by hand: the fake scorer gives -1 when the title's first
    # word is in the scoring prefix (document + its question) and -5 elsewhere.
    m1 = next(m for m in mis if m.arm == "c" and m.round == 1)
    ex_docs, ex_z = [], []
    docs, _ = generate_benchmark(0, 8, 6)
    by_id = {d.id: d for d in docs}
    for r in rounds:
        if r.arm == "c" and r.round == 1:
            qtext = next(a.question for a in answers if a.question_id == r.question_id)
            ex_docs += [by_id[i].content + "\n" + qtext for i in r.doc_ids]
            ex_z += [z[0] for z in r.compressions]
    n = len(ex_docs)
    mat = np.array([[-1.0 if z.split()[0] in d else -5.0 for d in ex_docs] for z in ex_z])  # [i, l]
    from scipy.special import logsumexp

    hand = np.mean([mat[i, i] - (logsumexp(mat[i]) - math.log(n)) for i in range(n)]) / math.log(2)
    assert m1.n_contexts == n and m1.mi_bits == pytest.approx(max(hand, 0.0), abs=1e-9)
    assert m1.ceiling_bits == pytest.approx(math.log2(n))
    # summary rows, one per arm, with the price note
    summary = json.loads((run / "summary.json").read_text())
    assert "billed as gpt-4o" in summary["price_note"] and "$2.50 in / $10.00 out" in summary["price_note"]
    rows = {r["arm"]: r for r in summary["rows"]}
    unc = rows["uncompressed"]
    assert unc["n"] == 5 and unc["accuracy"] is not None and unc["n_errors"] == 0
    assert rows["c"]["predictor_usd_per_question"] < unc["predictor_usd_per_question"]  # titles are shorter
    assert rows["c"]["usd_ratio_to_uncompressed"] == pytest.approx(
        rows["c"]["predictor_usd_per_question"] / unc["predictor_usd_per_question"])
    assert rows["truncate:5"]["compressor_calls"] == 0 and rows["truncate:5"]["compressor_flops"] == 0.0
    assert [m["round"] for m in rows["c"]["mi_by_round"]] == [1, 2]
    # accuracy: only the "founded" questions have gold 1956
    acc = np.mean([1.0 if a.gold == ("1956",) or (a.metric == "numeric" and numeric_match("1956", a.gold[0]))
                   else 0.0 for a in answers if a.arm == "uncompressed"])
    assert unc["accuracy"] == pytest.approx(acc)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "research" and manifest["predictor_price"]["entry"] == "gpt-4o"
    # resume: nothing new, nothing duplicated
    before = (run / "records.jsonl").read_bytes()
    again = run_research(cfg, tmp_path, backend_factory=_factory(pred))
    assert again.n_new_questions == 0 and (run / "records.jsonl").read_bytes() == before
    # a torn tail (killed mid-write) is cut off and the run completes
    with (run / "records.jsonl").open("ab") as fh:
        fh.write(b'{"kind": "answer", "arm": "c", "quest')
    res3 = run_research(_config(limit=6), tmp_path / "other", backend_factory=_factory(pred))
    assert res3.n_new_questions == 18
    run_research(cfg, tmp_path, backend_factory=_factory(pred))
    assert (run / "records.jsonl").read_bytes() == before
    # a different config in the same folder is refused
    with pytest.raises(UsageError, match="different config"):
        run_research(_config(rounds=3), tmp_path, backend_factory=_factory(pred))
    # report and plots from the run directory alone
    table = render(run)
    assert "uncompressed" in table and "billed as gpt-4o" in table and "bits (log base 2)" in table
    assert json.loads(render(run, "json"))["rows"][0]["arm"] == "c"
    files = plot_research(run, formats=("png",))
    assert sorted(files) == ["research_cost_accuracy", "research_rounds"]
    assert all(p.stat().st_size > 1000 for ps in files.values() for p in ps)
    # `compressbench report` / `plot` dispatch on the manifest's kind
    out = CliRunner().invoke(cli, ["report", str(run), "--format", "markdown"])
    assert out.exit_code == 0 and out.output.startswith("| arm |") and "| uncompressed |" in out.output
    out = CliRunner().invoke(cli, ["report", str(run), "--format", "html"])
    assert out.exit_code == 2 and "table, markdown, json or csv" in out.output
    out = CliRunner().invoke(cli, ["plot", str(run), "--out", str(tmp_path / "figs"), "--format", "svg"])
    assert out.exit_code == 0 and (tmp_path / "figs" / "research_rounds.svg").stat().st_size > 1000


def test_records_round_trip_and_refuse_unknown_versions(tmp_path):
    rec = RoundMIRecord("c", 1, 4, 1, 1.5, question_ids=("a", "b"))
    assert record_from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    with pytest.raises(DataError, match="version 99"):
        record_from_dict({**rec.to_dict(), "v": 99})
    with pytest.raises(DataError, match="not a research record"):
        record_from_dict({"kind": "cell"})


@pytest.mark.parametrize("over, pattern", [
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"compressors": ["c", "nope"]}, "'nope' is not a model"),
    ({"predictr": "p"}, "did you mean 'predictor'"),
    ({"samples": 3}, "samples > 1 needs temperature > 0"),
    ({"benchmark": {"kind": "folder", "path": "x"}}, "needs 'path'"),
    ({"compressors": [], "uncompressed": False}, "nothing to run"),
])
def test_bad_configs(over, pattern):
    with pytest.raises(UsageError, match=pattern):
        _config(**over)


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty-docs"
    empty.mkdir()
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answers": ["a"]}\n')
    cfg = yaml.safe_load(default_config_path().read_text())
    cfg["benchmark"] = {"kind": "folder", "path": str(empty), "questions": str(tmp_path / "q.jsonl")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    res = CliRunner().invoke(cli, ["research", str(tmp_path / "c.yaml"), "--runs-dir", str(runs)])
    assert res.exit_code == 2 and "holds no documents" in res.output
    assert not runs.exists()
    res = CliRunner().invoke(cli, ["research", "--set", "rounds=0", "--runs-dir", str(runs)])
    assert res.exit_code == 2 and "rounds must be an integer" in res.output
    res = CliRunner().invoke(cli, ["research", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, smollm2):
    """One shortened run of the built-in config on the real SmolLM2-135M (the session fixture's
    load): the first 12 questions, the SmolLM2 compressor, truncate:24, empty notes and the
    uncompressed arm (Gemma-3-270M left out to keep it short). Shared by the asserting tests."""
    from dataclasses import replace

    from compressbench.agent.research.config import load_research_config

    cfg = replace(load_research_config(limit=12), compressors=("smollm2-135m", "truncate:24", "empty"),
                  mi_n_boot=200)
    runs = tmp_path_factory.mktemp("research_runs")
    return run_research(cfg, runs, backend_factory=lambda kind, model, **kw: smollm2)


@pytest.mark.slow
def test_real_run_answers_above_chance_and_compression_costs_less(real_run):
    rows = {r["arm"]: r for r in real_run.rows}
    unc = rows["uncompressed"]
    assert unc["n"] == 12 and unc["n_errors"] == 0 and unc["chance_accuracy"] == pytest.approx(0.25)
    # the likelihood predictor reading the retrieved documents beats a uniform guess, CI and all
    assert unc["accuracy_ci_low"] > unc["chance_accuracy"]
    # ... and beats empty notes (the predictor's prior over the options)
    assert unc["accuracy"] > rows["empty"]["accuracy"]
    cheaper = [a for a, r in rows.items() if r["compressed"]
               and r["predictor_usd_per_question"] < unc["predictor_usd_per_question"]]
    assert "smollm2-135m" in cheaper and "truncate:24" in cheaper
    for arm in ("smollm2-135m", "truncate:24"):
        mi = rows[arm]["mi_by_round"]
        assert [m["round"] for m in mi] == [1, 2]
        assert all(m["mi_bits"] is not None and 0.0 <= m["mi_bits"] < m["ceiling_bits"] for m in mi), mi
    assert any(r["on_cost_accuracy_front"] for r in rows.values())


@pytest.mark.slow
def test_real_run_records_planner_queries_usage_and_report(real_run):
    recs = read_research_records(real_run.run_dir)
    answers = [r for r in recs if isinstance(r, AnswerRecord)]
    assert len(answers) == 48 and {a.planner for a in answers} == {"entities"}
    for a in answers:
        u = a.usage["predictor"]
        # real token counts from the model, billed at GPT-4o list prices (input only: options are scored)
        assert u.n_prompt_tokens > 20 and u.n_completion_tokens == 0 and u.n_calls == 2
        assert u.api_usd == pytest.approx(u.n_prompt_tokens * 2.50 / 1e6)
        assert u.flops > 2 * 134e6 * u.n_prompt_tokens * 0.5  # shared-prefix schedule: about 2 N per token
    rounds = [r for r in recs if isinstance(r, RoundRecord)]
    # round 2 searches the names the first round's notes held (never the question itself when a name was found)
    for r in rounds:
        if r.round == 2:
            prev = next(p for p in rounds if p.arm == r.arm and p.question_id == r.question_id and p.round == 1)
            if prev.entities:
                assert r.queries[0].startswith(prev.entities[0]) or any(q.startswith(e) for q in r.queries
                                                                       for e in prev.entities)
    comp = [r for r in rounds if r.arm == "smollm2-135m"]
    assert all(len(r.compressions) == len(r.doc_ids) for r in comp) and any(r.compressions for r in comp)
    out = CliRunner().invoke(cli, ["report", str(real_run.run_dir)])
    assert out.exit_code == 0 and "billed as gpt-4o" in out.output and "front" in out.output


def test_run_with_a_search_that_always_raises_keeps_every_record(tmp_path):
    def down(query: str, k: int):
        raise TimeoutError("search backend timed out")

    pred = ScriptedPredictor(plan="", step=lambda t: "ANSWER: x", final=lambda t: "ANSWER: x")
    res = run_research(_config(compressors=["c"], limit=3), tmp_path, backend_factory=_factory(pred), search=down)
    answers = [r for r in read_research_records(res.run_dir) if isinstance(r, AnswerRecord)]
    assert len(answers) == 6 and all("TimeoutError: search backend timed out" in a.error for a in answers)
    rows = json.loads((res.run_dir / "summary.json").read_text())["rows"]
    assert [(r["arm"], r["n"], r["n_errors"], r["accuracy"]) for r in rows] == [("c", 3, 3, None),
                                                                               ("uncompressed", 3, 3, None)]
    mis = [r for r in read_research_records(res.run_dir) if isinstance(r, RoundMIRecord)]
    assert [(m.round, m.mi_bits) for m in mis] == [(1, None)] and "MI needs at least 2" in mis[0].note


def test_run_one_plain_question(bench):
    docs, _ = bench
    pred = ScriptedPredictor(plan="SEARCH: Kestrel Works", step=lambda t: "ANSWER: " + t.split("[")[1].split("]")[0])
    ans, rounds = ResearchAgent(pred, BM25Search(docs)).run("Which company acquired Kestrel Works?")
    assert ans.score is None and ans.failure is None and ans.gold == ()  # no gold answer: not scored
    assert len(rounds) == 1 and rounds[0].queries == ("Which company acquired Kestrel Works?", "Kestrel Works")
    assert ans.answer == rounds[0].doc_ids[0]  # the scripted reply names the first note's document


def test_a_second_writer_is_refused_while_a_run_holds_the_folder(tmp_path):
    from compressbench.core.errors import RunDirBusy
    from compressbench.engine.store import RunLock

    pred = ScriptedPredictor(plan="", step=lambda t: "ANSWER: x", final=lambda t: "ANSWER: x")
    with RunLock(tmp_path / "t"):
        with pytest.raises(RunDirBusy, match="in use"):
            run_research(_config(limit=1), tmp_path, backend_factory=_factory(pred))
    assert run_research(_config(limit=1), tmp_path, backend_factory=_factory(pred)).n_new_questions == 3


# --------------------------------------------------------------------------- option sets and the entities planner


def test_option_sets_hold_the_gold_once_and_same_type_distractors_and_are_seeded():
    docs, qs = generate_benchmark(seed=5, n_companies=8, n_questions=25, n_options=4)
    assert (docs, qs) == generate_benchmark(seed=5, n_companies=8, n_questions=25, n_options=4)
    assert [q.options for q in qs] != [q.options for q in generate_benchmark(6, 8, 25, 4)[1]]
    # the corpus's values of each type, read back from the documents themselves
    revenues = {m for d in docs if d.id.startswith("filing-") and d.id.endswith("-2024")
                for m in re.findall(r"revenue of (\$[\d,.]+ million)", d.text)}
    heads = {m for d in docs for m in re.findall(r"employed ([\d,]+) people", d.text)}
    years = {m for d in docs if d.id.startswith("history-") for m in re.findall(r"founded in (\d{4})", d.text)}
    ceos = {d.text.split(" is the chief executive")[0] for d in docs if d.id.startswith("ceo-")}
    for q in qs:
        (gold,) = q.example.answers
        assert len(q.options) == 4 and q.options.count(gold) == 1 and len(set(q.options)) == 4
        pool = (revenues if "revenue" in q.text else heads if "How many people" in q.text
                else years if "which year" in q.text else ceos)
        assert set(q.options) <= pool, (q.text, q.options)
        ex = q.choice_example()
        assert ex.options == q.options and ex.options["ABCD".index(ex.answers[0])] == gold
        # the evidence sentences are in their gold documents and state the answer when it is the last hop
        by_id = {d.id: d for d in docs}
        assert [d for d, _ in q.evidence] == list(q.gold_doc_ids)
        assert all(sent in by_id[d].text for d, sent in q.evidence)
        assert gold in q.evidence[-1][1]
    # the gold's position is not fixed
    assert len({q.options.index(q.example.answers[0]) for q in qs}) > 1
    with pytest.raises(DataError, match="n_options must be between 2"):
        generate_benchmark(0, 4, 5, n_options=5)


def test_find_entities_reads_names_and_companies():
    from compressbench.agent.research import find_entities

    text = ("Vantrix Dynamics leadership\nMira Halvorsen is the chief executive officer of Vantrix Dynamics, "
            "which has its head office in Porto. The Oberline Foods deal and Ana Ruiz-Lamberti. Analysts expect "
            "little. Mira took over.")
    assert find_entities(text) == ["Vantrix Dynamics", "Mira Halvorsen", "Oberline Foods", "Ana Ruiz-Lamberti"]


class OptionScorer:
    """A likelihood double: log p(option | notes) = -1 when the option text is in the notes, else
    -5 - (its length / 100) (so a tie is broken the same way every time); also a compressor that
    writes the first sentence of the document body."""

    name = "option-scorer"
    has_chat_template = False

    def __init__(self):
        self.calls = 0

    def score_matrix(self, prefixes, continuations):
        self.calls += 1
        return np.array([[-1.0 if c.strip() and c.strip() in p else -5.0 - len(c) / 100 for c in continuations]
                         for p in prefixes])

    def score(self, prefixes, continuations):
        raise AssertionError("not used")

    def count_tokens(self, texts):
        return [len(t.split()) for t in texts]

    def generate(self, chats, params):
        self.calls += 1
        out = []
        for c in chats:
            text = c if isinstance(c, str) else c[-1]["content"]
            body = text.split("Document:\n", 1)[1].split("\n", 2)[1]  # the text line after the title
            first = body.split(". ")[0] + "."
            out.append(Generation((Sample(first, "stop", len(first.split())),) * params.n,
                                  Usage(len(text.split()), len(first.split()) * params.n)))
        return out

    def info(self):
        return ModelInfo(reference="option-scorer", n_params=1_000_000, n_layers=2, d_model=32, n_heads=2,
                         head_dim=16)


def test_entities_planner_finds_the_second_hop_from_the_first_hops_text(bench):
    docs, qs = bench
    q = next(q for q in qs if q.text.startswith("What was the 2024 revenue of the company whose"))
    first, second = q.gold_doc_ids  # ceo-<co>, filing-<co>-2024
    company = re.search(r"officer of (.+?),", next(d for d in docs if d.id == first).text).group(1)
    assert company not in q.text  # only the first hop's document names it
    agent = ResearchAgent(OptionScorer(), BM25Search(docs),
                          settings=AgentSettings(rounds=2, docs_per_query=2, max_queries=1,
                                                 predictor_mode="loglik", planner="entities"))
    ((ans, rounds),) = agent.run_batch([q])
    assert first in rounds[0].doc_ids and second not in rounds[0].doc_ids
    assert company in rounds[0].entities
    assert rounds[1].queries[0].startswith(company)  # round 2 searches the company the first hop named
    assert second in rounds[1].doc_ids and ans.gold_recall == 1.0
    # the likelihood predictor read the filing: the gold revenue is in the notes, the distractors are not
    assert ans.answer == q.example.answers[0] and ans.score == 1.0 and ans.options == q.options
    assert ans.planner == "entities" and ans.predictor_mode == "loglik" and ans.metric == "choice"
    assert [r.action for r in rounds] == ["read", "answer"]
    assert rounds[1].loglik["answer"] == "ABCD"[q.options.index(q.example.answers[0])]
    # without the planner (the question searched again) the second hop is missed
    lone = ResearchAgent(OptionScorer(), lambda text, k: BM25Search(docs)(q.text, k),
                         settings=AgentSettings(rounds=2, docs_per_query=2, max_queries=1, predictor_mode="loglik",
                                                planner="entities"))
    ((ans2, _),) = lone.run_batch([q])
    assert second not in ans2.doc_ids


def _loglik_config(**over):
    raw = {"name": "ll", "models": {"m": {"backend": "hf", "model": "m"}}, "predictor": "m", "scorer": "m",
           "predictor_price": "gpt-4o", "compressors": ["m", "truncate:6", "oracle", "empty"],
           "benchmark": {"kind": "generated", "seed": 0, "n_companies": 8, "n_questions": 8},
           "rounds": 2, "docs_per_query": 2, "max_queries": 1, "batch_size": 4, "mi_n_boot": 100,
           "mi_max_contexts": 6}
    raw.update(over)
    return config_from_dict(raw)


def test_loglik_run_with_oracle_and_empty_arms_and_the_cost_accuracy_front(tmp_path):
    from compressbench.agent.research.report import findings

    model = OptionScorer()
    res = run_research(_loglik_config(), tmp_path, backend_factory=lambda kind, name, **kw: model)
    recs = read_research_records(res.run_dir)
    answers = {(a.arm, a.question_id): a for a in recs if isinstance(a, AnswerRecord)}
    _, qs = generate_benchmark(0, 8, 8)
    rows = {r["arm"]: r for r in res.rows}
    assert set(rows) == {"m", "truncate:6", "oracle", "empty", "uncompressed"}
    for q in qs:
        oracle = answers[("oracle", q.id)]
        notes = [r for r in recs if isinstance(r, RoundRecord) and r.arm == "oracle" and r.question_id == q.id]
        evidence = dict(q.evidence)
        for r in notes:  # the oracle keeps each gold document's evidence sentence, nothing else
            assert [z[0] for z in r.compressions] == [evidence.get(d, "") for d in r.doc_ids]
        # the double picks the option written in the notes (the gold, once the last hop was read;
        # the oracle's first-hop sentences state no option), else the shortest one
        (gold,) = q.example.answers
        expected = gold if q.gold_doc_ids[-1] in oracle.doc_ids else min(q.options, key=len)
        assert oracle.answer == expected and oracle.score == float(expected == gold)
        # empty notes: the predictor saw no option, so it picked the shortest (the double's tie-break)
        e = answers[("empty", q.id)]
        assert e.answer == min(q.options, key=len) and e.usage["compressor"].n_calls == 0
    assert rows["empty"]["chance_accuracy"] == pytest.approx(0.25)
    assert rows["empty"]["mi_by_round"][0]["mi_bits"] == 0.0
    # every compressed arm costs fewer predictor tokens than the raw documents
    for arm in ("m", "truncate:6", "oracle", "empty"):
        assert rows[arm]["predictor_usd_per_question"] < rows["uncompressed"]["predictor_usd_per_question"]
        for m in rows[arm]["mi_by_round"]:
            assert m["n_contexts"] <= 6 and (m["mi_bits"] is None or m["mi_bits"] <= m["ceiling_bits"] + 1e-9)
    # the front by hand: no other arm has lower-or-equal cost and higher-or-equal accuracy (one strictly)
    pts = {a: (r["predictor_usd_per_question"], r["accuracy"]) for a, r in rows.items()}
    for a, (c, acc) in pts.items():
        dominated = any(c2 <= c and a2 >= acc and (c2 < c or a2 > acc) for b, (c2, a2) in pts.items() if b != a)
        assert rows[a]["on_cost_accuracy_front"] is (not dominated)
    lines = findings(json.loads((res.run_dir / "manifest.json").read_text()), res.rows)
    front = [a for a in rows if rows[a]["on_cost_accuracy_front"]]
    assert any(line.startswith("On the cost-accuracy front") and all(a in line for a in front) for line in lines)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["findings"] == lines and summary["kind"] == "research"
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["planner"] == "entities" and manifest["predictor_mode"] == "loglik"
    # every query issued is recorded, and the summary counts them
    assert rows["m"]["n_queries"] == sum(len(r.queries) for r in recs if isinstance(r, RoundRecord) and r.arm == "m")


def test_a_resumed_run_makes_no_model_call_for_cached_work(tmp_path):
    """An interrupted run (Ctrl-C inside a model call) resumed: the work done before is read from
    the cache; only what was not done calls the model. A run whose records are lost but whose
    cache is whole (killed after the model work) loads no model at all."""
    cfg = _loglik_config()
    clean = OptionScorer()
    ref = run_research(cfg, tmp_path / "clean", backend_factory=lambda kind, name, **kw: clean)
    total = clean.calls

    class Interrupting(OptionScorer):
        def __init__(self, after):
            super().__init__()
            self.after = after

        def score_matrix(self, prefixes, continuations):
            if self.calls >= self.after:
                raise KeyboardInterrupt
            return super().score_matrix(prefixes, continuations)

    first = Interrupting(after=total // 2)
    with pytest.raises(KeyboardInterrupt):
        run_research(cfg, tmp_path / "r", backend_factory=lambda kind, name, **kw: first)
    done_before = first.calls  # the calls that returned (the interrupted one did not)
    loads = []
    again = OptionScorer()

    def factory(kind, name, **kw):
        loads.append(name)
        return again

    res = run_research(cfg, tmp_path / "r", backend_factory=factory)
    assert again.calls == total - done_before  # nothing done before is asked again
    key = lambda rs: sorted((r["arm"], r["accuracy"], r["predictor_usd_per_question"]) for r in rs)  # noqa: E731
    assert key(res.rows) == key(ref.rows)
    # records gone, cache whole: no model is loaded, no call made, the same answers
    (res.run_dir / "records.jsonl").unlink()
    loads.clear()
    idle = OptionScorer()
    res2 = run_research(cfg, tmp_path / "r", backend_factory=lambda kind, name, **kw: loads.append(name) or idle)
    assert loads == [] and idle.calls == 0 and res2.model_loads == {} and res2.cache_misses == 0
    assert key(res2.rows) == key(ref.rows)


@pytest.mark.parametrize("over, pattern", [
    ({"planner": "model"}, "planner: model needs predictor_mode: generate"),
    ({"predictor_mode": "vote"}, "predictor_mode must be one of"),
    ({"mi_max_contexts": 1}, "at least 2"),
])
def test_bad_loglik_configs(over, pattern):
    with pytest.raises(UsageError, match=pattern):
        _loglik_config(**over)


def test_loglik_needs_options_and_the_oracle_needs_evidence(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Graz is a city.")
    (tmp_path / "q.jsonl").write_text('{"id": "x", "question": "Where?", "answers": ["Graz"]}\n')
    bench = {"kind": "folder", "path": str(tmp_path / "docs"), "questions": str(tmp_path / "q.jsonl")}
    with pytest.raises(DataError, match="have none; give 'options'"):
        run_research(_loglik_config(benchmark=bench, compressors=[]), tmp_path / "runs")
    with pytest.raises(DataError, match="give 'evidence'"):
        run_research(_loglik_config(benchmark=bench, compressors=["oracle"], predictor_mode="generate",
                                    planner="entities"), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_run_killed_with_sigkill_resumes_from_the_cache(tmp_path):
    """kill -9 in the middle of a run (a child process kills itself inside a model call), then a
    resume: the model calls made before the kill are not made again (at most the partly done batch
    of the interrupted call is redone), and the result equals an uninterrupted run's."""
    import inspect
    import os
    import subprocess
    import sys

    cfg_raw = {"name": "ll", "models": {"m": {"backend": "hf", "model": "m"}}, "predictor": "m", "scorer": "m",
               "predictor_price": "gpt-4o", "compressors": ["m", "truncate:6", "oracle", "empty"],
               "benchmark": {"kind": "generated", "seed": 0, "n_companies": 8, "n_questions": 8},
               "rounds": 2, "docs_per_query": 2, "max_queries": 1, "batch_size": 4, "mi_n_boot": 100,
               "mi_max_contexts": 6}
    cfg = config_from_dict(cfg_raw)
    clean = OptionScorer()
    ref = run_research(cfg, tmp_path / "clean", backend_factory=lambda kind, name, **kw: clean)
    total = clean.calls
    counter = tmp_path / "calls.txt"
    child = "\n".join([
        "import os, signal, sys, json", "import numpy as np",
        "from compressbench.core.types import Generation, ModelInfo, Sample, Usage",
        "from compressbench.agent.research.config import config_from_dict",
        "from compressbench.agent.research.run import run_research",
        inspect.getsource(OptionScorer),
        "class Killing(OptionScorer):",
        "    def _tick(self):",
        f"        if self.calls >= {total // 2}:",
        "            os.kill(os.getpid(), signal.SIGKILL)",
        f"        open({str(counter)!r}, 'a').write('1')",
        "    def score_matrix(self, p, c):",
        "        self._tick()",
        "        return OptionScorer.score_matrix(self, p, c)",
        "    def generate(self, chats, params):",
        "        self._tick()",
        "        return OptionScorer.generate(self, chats, params)",
        "m = Killing()",
        f"run_research(config_from_dict(json.loads({json.dumps(json.dumps(cfg_raw))})), {str(tmp_path / 'r')!r},",
        "             backend_factory=lambda kind, name, **kw: m)",
    ])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(p) for p in sys.path if p]))
    res = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == -9, res.stderr[-2000:]
    done_before = len(counter.read_text())  # calls that returned before the kill
    assert 0 < done_before < total
    again = OptionScorer()
    resumed = run_research(cfg, tmp_path / "r", backend_factory=lambda kind, name, **kw: again)
    assert total - done_before <= again.calls <= total - done_before + cfg.batch_size
    key = lambda rs: sorted((r["arm"], r["accuracy"], r["predictor_usd_per_question"]) for r in rs)  # noqa: E731
    assert key(resumed.rows) == key(ref.rows)


# --------------------------------------------------------------------------- usable bits about the answer


def _hand_log2_q(lls, k):
    """log2 of option k's softmax probability, written out: ll_k / ln 2 - log2 sum_j 2^(ll_j / ln 2)."""
    return math.log2(math.exp(lls[k]) / sum(math.exp(v) for v in lls))


def test_usable_bits_per_arm_by_hand_from_the_recorded_option_log_probs(tmp_path):
    from compressbench.agent.research.report import findings, format_table, gold_letters
    from compressbench.core.stats import bootstrap_mean_ci, correlate, spans_zero

    model = OptionScorer()
    res = run_research(_loglik_config(), tmp_path, backend_factory=lambda kind, name, **kw: model)
    recs = read_research_records(res.run_dir)
    _, qs = generate_benchmark(0, 8, 8)
    rows = {r["arm"]: r for r in res.rows}
    final = {(r.arm, r.question_id): r for r in recs if isinstance(r, RoundRecord) and r.round == 2}
    for q in qs:
        # the empty arm's notes hold no option, so the double scored each option -5 - len(" " + option) / 100
        lls0 = [o["logprob_nats"] for o in final[("empty", q.id)].loglik["options"]]
        assert lls0 == pytest.approx([-5.0 - (len(o) + 1) / 100 for o in q.options])
        a = next(a for a in recs if isinstance(a, AnswerRecord) and a.arm == "m" and a.question_id == q.id)
        letter = "ABCD"[q.options.index(q.example.answers[0])]
        assert a.gold_letters == (letter,)
        assert gold_letters(dataclasses.replace(a, gold_letters=())) == (letter,)  # a record from before the field
    some_positive = False
    for arm in ("m", "truncate:6", "oracle", "empty", "uncompressed"):
        pvis, ceilings = [], []
        for q in qs:
            k = q.options.index(q.example.answers[0])
            lls = [o["logprob_nats"] for o in final[(arm, q.id)].loglik["options"]]
            lls0 = [o["logprob_nats"] for o in final[("empty", q.id)].loglik["options"]]
            pvis.append(_hand_log2_q(lls, k) - _hand_log2_q(lls0, k))
            ceilings.append(-_hand_log2_q(lls0, k))
        r = rows[arm]
        assert r["n_usable"] == len(qs)
        assert r["usable_bits"] == pytest.approx(sum(pvis) / len(pvis), abs=1e-9)
        assert r["usable_ceiling_bits"] == pytest.approx(sum(ceilings) / len(ceilings), abs=1e-9)
        assert r["usable_bound_bits"] == pytest.approx(2.0)  # log2 of four options
        _, lo, hi = bootstrap_mean_ci(pvis)  # the sweep's interval, on the hand-computed values
        assert (r["usable_bits_ci_low"], r["usable_bits_ci_high"]) == pytest.approx((lo, hi), abs=1e-9)
        assert max(pvis) <= max(ceilings) + 1e-9
        some_positive |= r["usable_bits"] > 0.5
    assert rows["empty"]["usable_bits"] == 0.0 and "by construction" in rows["empty"]["usable_note"]
    # the notes that state the gold option (oracle, raw documents) make it more likely than no notes
    assert some_positive and rows["oracle"]["usable_bits"] > 0.5
    # the rows as written: summary.json and summary.csv carry the columns, the table and Findings show them
    summary = json.loads((res.run_dir / "summary.json").read_text())
    srows = {r["arm"]: r for r in summary["rows"]}
    assert srows["oracle"]["usable_bits"] == pytest.approx(rows["oracle"]["usable_bits"])
    header = (res.run_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"usable_bits", "usable_bits_ci_low", "usable_bits_ci_high", "usable_ceiling_bits",
            "usable_bound_bits"} <= set(header)
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    table = format_table(manifest, res.rows)
    assert "usable bits [95% CI]" in table and "Bits, log base 2" in table
    lines = findings(manifest, res.rows)
    assert any(line.startswith("oracle: usable bits about the answer") and "log base 2" in line for line in lines)
    c = correlate([rows[a]["usable_bits"] for a in rows], [rows[a]["accuracy"] for a in rows])
    supported = not spans_zero(c.spearman_ci_low, c.spearman_ci_high) and c.spearman_ci_low > 0
    assert any(line.startswith("Usable bits track accuracy" if supported else "Usable bits do not track")
               for line in lines)


def test_usable_bits_not_measured_without_an_empty_arm(tmp_path):
    from compressbench.agent.research.report import findings, format_table

    model = OptionScorer()
    res = run_research(_loglik_config(compressors=["truncate:6", "oracle"], limit=3), tmp_path,
                       backend_factory=lambda kind, name, **kw: model)
    assert {r["arm"] for r in res.rows} == {"truncate:6", "oracle", "uncompressed"}
    for r in res.rows:
        assert r["usable_bits"] is None and r["usable_ceiling_bits"] is None and r["n_usable"] == 0
        assert r["usable_note"].startswith("not measured: the run has no empty arm")
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert format_table(manifest, res.rows).count("not measured") >= 3
    (line,) = [x for x in findings(manifest, res.rows) if "sable bits" in x]
    assert line.startswith("Usable bits about the answer not measured: the run has no empty arm")


def _usable_row(arm, bits, acc):
    return {"arm": arm, "usable_bits": bits, "usable_bits_ci_low": bits - 0.1, "usable_bits_ci_high": bits + 0.1,
            "usable_ceiling_bits": 3.0, "usable_bound_bits": 2.0, "n_usable": 20, "usable_note": None,
            "accuracy": acc}


def test_usable_findings_claim_a_relation_only_when_the_ci_supports_it():
    from compressbench.agent.research.report import usable_findings

    # the same order on both: Spearman rho 1 in every resample
    tracked = usable_findings([_usable_row(f"a{i}", b, acc) for i, (b, acc) in
                               enumerate([(0.2, 0.3), (0.9, 0.4), (1.5, 0.55), (2.0, 0.7), (2.6, 0.9)])])
    assert tracked[-1].startswith("Usable bits track accuracy across arms: Spearman rho 1.000 [1.00, 1.00] over 5 arms")
    # rho = 1 - 6 * 14 / (5 * 24) = 0.3 by hand: a bootstrap CI over five arms holds 0
    loose = usable_findings([_usable_row(f"a{i}", b, acc) for i, (b, acc) in
                             enumerate([(0.0, 0.5), (1.0, 0.1), (2.0, 0.9), (3.0, 0.3), (4.0, 0.7)])])
    assert loose[-1].startswith("Usable bits do not track accuracy distinguishably across arms: Spearman rho 0.300")
    assert "do not support a relation" in loose[-1]
    few = usable_findings([_usable_row("a", 0.1, 0.2), _usable_row("b", 1.0, 0.8)])
    assert few[-1].startswith("Usable bits against accuracy across arms: not correlated (too few")
    # the per-arm verdict follows the CI: above 0 / includes 0
    assert tracked[0].startswith("a0: usable bits about the answer 0.200 [0.100, 0.300] over 20 questions, of a "
                                 "ceiling of 3.00 (log2 #options 2.00; bits, log base 2)") and "CI above 0" in tracked[0]
    assert loose[0].startswith("a0: usable bits about the answer 0.000 [-0.100, 0.100]") and "includes it" in loose[0]
