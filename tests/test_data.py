"""Dataset loaders on hand-written fixture files in each public schema, bad inputs, and the
synthetic generator. Expected values are read off the fixture files by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compressbench.data import load_dataset
from compressbench.core.errors import DataError, UsageError

FIX = Path(__file__).parent / "fixtures"


def _ids(spec):
    return [e.id for e in load_dataset(spec)]


# ---------------------------------------------------------------------------------- local schema


def test_local_jsonl_fields_and_order():
    exs = load_dataset({"kind": "jsonl", "path": str(FIX / "local.jsonl")})
    assert [e.id for e in exs] == ["loc-1", "loc-2", "loc-3", "loc-4"]
    e1, e2, e3, e4 = exs
    assert e1.options == ("Ada Brandt", "Otto Lenz", "Mira Holm") and e1.answers == ("A",)
    assert e1.question == "Who designed the museum?" and "Ada Brandt" in e1.context
    assert e2.answers == ("$4.2 million",) and e2.reference == "Revenue was $4.2 million."
    assert e2.options == () and e2.metadata["source"] == "handmade"
    # options as a mapping, answer given as option text -> mapped back to its letter
    assert e3.options == ("0.8 km", "1.2 km") and e3.answers == ("B",)
    assert e4.answers == () and e4.reference == "She writes it in Danish."
    assert all(e.dataset == "jsonl" for e in exs)


def test_local_split_limit_name_and_stable_ids():
    spec = {"kind": "jsonl", "path": str(FIX / "local.jsonl"), "split": "test", "name": "mine"}
    assert _ids(spec) == ["loc-1", "loc-2", "loc-4"]
    assert _ids({**spec, "limit": 2}) == ["loc-1", "loc-2"]
    assert _ids(spec) == _ids(spec)
    assert load_dataset(spec)[0].dataset == "mine"
    assert load_dataset(spec) == load_dataset(spec)
    with pytest.raises(DataError, match=r"no rows with split 'dev'.*\['test', 'train'\]"):
        load_dataset({**spec, "split": "dev"})


def test_shuffle_is_seeded_and_limit_applies_after_it():
    base = {"kind": "jsonl", "path": str(FIX / "local.jsonl")}
    a = _ids({**base, "shuffle": True, "seed": 3})
    assert a == _ids({**base, "shuffle": True, "seed": 3})
    assert sorted(a) == _ids(base)
    orders = {tuple(_ids({**base, "shuffle": True, "seed": s})) for s in range(8)}
    assert len(orders) > 1  # different seeds give different orders
    assert _ids({**base, "shuffle": True, "seed": 3, "limit": 2}) == a[:2]


def test_parquet_and_folder_with_split_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in (FIX / "local.jsonl").read_text().splitlines() if line.strip()]
    rows = [{k: r.get(k) for k in ("id", "context", "question", "answers", "reference")}
            for r in rows if not r.get("options")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    (tmp_path / "train.jsonl").write_text(json.dumps(rows[0] | {"id": "t-1"}) + "\n")
    exs = load_dataset({"kind": "parquet", "path": str(tmp_path), "split": "test"})
    assert [e.id for e in exs] == ["loc-2", "loc-4"]
    assert exs[0].answers == ("$4.2 million",) and exs[1].reference == "She writes it in Danish."
    assert _ids({"kind": "parquet", "path": str(tmp_path), "split": "train"}) == ["t-1"]
    with pytest.raises(DataError, match="no data file for split 'dev'"):
        load_dataset({"kind": "parquet", "path": str(tmp_path), "split": "dev"})


# ---------------------------------------------------------------------------------- bad inputs


def _write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return p


GOOD = {"id": "a", "context": "c", "question": "q", "answers": ["x"]}


@pytest.mark.parametrize("field", ["id", "context", "question"])
def test_missing_field_names_file_row_and_field(tmp_path, field):
    bad = {k: v for k, v in GOOD.items() if k != field}
    p = _write(tmp_path, [GOOD, {**GOOD, "id": "b"} if field != "id" else GOOD | {"id": "b"}, bad])
    with pytest.raises(DataError) as ei:
        load_dataset({"kind": "jsonl", "path": str(p)})
    msg = str(ei.value)
    assert str(p) in msg and "line 3" in msg and repr(field) in msg


def test_row_needs_answers_or_reference(tmp_path):
    p = _write(tmp_path, [{"id": "a", "context": "c", "question": "q"}])
    with pytest.raises(DataError, match=r"line 1: missing field 'answers'"):
        load_dataset({"kind": "jsonl", "path": str(p)})


def test_bad_rows(tmp_path):
    cases = [
        ([GOOD, GOOD], r"line 2: duplicate id 'a' \(first at .*line 1\)"),
        ([GOOD | {"options": ["x", "y"], "answers": ["C"]}], r"answer 'C' is neither an option letter \(A-B\)"),
        ([GOOD | {"context": "   "}], r"line 1: field 'context' is empty"),
        ([GOOD | {"question": 5}], r"field 'question' must be str, got int"),
        ([GOOD | {"options": {"A": "x", "C": "y"}}], r"consecutive letters"),
    ]
    for rows, pattern in cases:
        p = _write(tmp_path, rows)
        with pytest.raises(DataError, match=pattern):
            load_dataset({"kind": "jsonl", "path": str(p)})


def test_invalid_json_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{not json}\n")
    with pytest.raises(DataError, match=r"line 2: invalid JSON"):
        load_dataset({"kind": "jsonl", "path": str(p)})


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    good = (json.dumps(GOOD) + "\n").encode()
    bad = b'{"id": "b", "context": "caf\xe9", "question": "q", "answers": ["x"]}\n'
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(good + bad)
    offset = len(good) + bad.index(b"\xe9")
    with pytest.raises(DataError) as ei:
        load_dataset({"kind": "jsonl", "path": str(p)})
    assert str(p) in str(ei.value) and f"byte offset {offset}" in str(ei.value) and "0xe9" in str(ei.value)
    # the other loaders read through the same path
    lh = tmp_path / "lh.json"
    raw = b'{"p": {"texts": {"text_0": "\xff"}}}'
    lh.write_bytes(raw)
    assert raw.index(b"\xff") == 28  # counted by hand: 28 ASCII bytes precede it
    with pytest.raises(DataError, match=r"lh.json is not valid UTF-8: byte 0xff at byte offset 28"):
        load_dataset({"kind": "longhealth", "path": str(lh)})


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_files(tmp_path, content):
    p = tmp_path / "empty.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match="has no rows"):
        load_dataset({"kind": "jsonl", "path": str(p)})
    lh = tmp_path / "lh.json"
    lh.write_text("{}")
    with pytest.raises(DataError, match="no questions found"):
        load_dataset({"kind": "longhealth", "path": str(lh)})
    q = tmp_path / "q.jsonl"
    q.write_text(content)
    with pytest.raises(DataError, match="questions file .* has no rows"):
        load_dataset({"kind": "fineweb", "path": str(FIX / "fineweb.jsonl"), "questions": str(q)})


def test_bad_specs():
    path = str(FIX / "local.jsonl")
    cases = [
        ({"kind": "jsonll", "path": path}, r"kind 'jsonll' is unknown \(did you mean 'jsonl'\?\)"),
        ({"kind": "jsonl", "path": path, "limt": 3}, r"unknown key 'limt'.*did you mean 'limit'"),
        ({"kind": "jsonl"}, r"needs 'path'"),
        ({"kind": "jsonl", "path": path, "limit": 0}, r"'limit' must be a positive integer"),
        ({"kind": "jsonl", "hub_id": "x/y"}, r"local files only"),
        ({"kind": "qasper", "path": path, "hub_id": "allenai/qasper"}, r"both 'path' and 'hub_id'"),
        ({"kind": "synthetic", "n_patients": 0}, r"n_patients must be an integer in \[1,"),
        ({"kind": "synthetic", "n_questions_per_patient": 9}, r"n_questions_per_patient must be"),
        ({"kind": "jsonl", "path": "/nonexistent/x.jsonl"}, r"does not exist"),
        ({"kind": "fineweb", "path": str(FIX / "fineweb.jsonl")}, r"pass `questions`"),
        ({"kind": "jsonl", "path": path, "questions": path}, r"'questions' applies to context-only"),
        ("synthetic", r"must be a mapping"),
    ]
    for spec, pattern in cases:
        with pytest.raises(DataError, match=pattern):
            load_dataset(spec)
    assert issubclass(DataError, UsageError)  # the CLI maps these to exit code 2


def test_hub_offline_says_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"offline mode.*pass the local file or folder as `path`"):
        load_dataset({"kind": "qasper", "hub_id": "allenai/qasper", "split": "test"})


# ---------------------------------------------------------------------------------- public schemas


def test_longhealth():
    exs = load_dataset({"kind": "longhealth", "path": str(FIX / "longhealth.json")})
    assert [e.id for e in exs] == ["patient_01-q1", "patient_01-q2", "patient_02-q1"]
    e = exs[0]
    # texts in natural key order: text_0, text_2, text_10
    assert e.context == ("Discharge letter 1. Ms Marquardt was admitted with night sweats and weight loss.\n\n"
                         "Discharge letter 3. A PET-CT showed complete metabolic remission.\n\n"
                         "Discharge letter 11. The sixth cycle of R-CHOP was completed without complications.")
    assert e.options == ("Chest pain", "Night sweats and weight loss", "Headache", "Back pain", "Cough")
    assert e.answers == ("B",) and e.reference == "Night sweats and weight loss"
    assert exs[1].answers == ("D",) and exs[2].answers == ("E",)
    assert exs[2].context.startswith("Discharge letter 1. Mr Falk")
    assert e.metadata["patient_id"] == "patient_01" and e.metadata["question_no"] == 1
    assert _ids({"kind": "longhealth", "path": str(FIX / "longhealth.json"), "limit": 2}) == [x.id for x in exs[:2]]


def test_longhealth_bad_correct_and_missing_option(tmp_path):
    data = json.loads((FIX / "longhealth.json").read_text())
    data["patient_02"]["questions"][0]["correct"] = "Something else"
    p = tmp_path / "lh.json"
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"patient 'patient_02': question 1 \(No 1\): field 'correct'"):
        load_dataset({"kind": "longhealth", "path": str(p)})
    data = json.loads((FIX / "longhealth.json").read_text())
    del data["patient_01"]["questions"][1]["answer_c"]
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"patient 'patient_01': question 2 \(No 2\): missing field 'answer_c'"):
        load_dataset({"kind": "longhealth", "path": str(p)})


def test_financebench():
    exs = load_dataset({"kind": "financebench", "path": str(FIX / "financebench.jsonl")})
    assert [e.id for e in exs] == ["financebench_id_00001", "financebench_id_00002"]
    e1, e2 = exs
    assert e1.answers == ("$1577.00",) and e1.reference == "$1577.00" and e1.options == ()
    assert e1.context.startswith("Consolidated Statement of Cash Flows\nPurchases")
    assert e1.metadata["company"] == "Acme Tools" and e1.metadata["doc_period"] == 2019
    # two distinct evidence pages (the third repeats the first), in order
    assert e2.context == ("Item 5. Dividends declared per share were $0.42.\n\n"
                          "Item 5 (continued). The board approved the dividend in March.")
    short = load_dataset({"kind": "financebench", "path": str(FIX / "financebench.jsonl"),
                          "context_field": "evidence_text"})
    assert short[0].context == "Purchases of property, plant and equipment (PP&E) (1,577)"


def test_financebench_docs_dir_and_missing_answer(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ACMETOOLS_2019_10K.txt").write_text("Full filing text of Acme.")
    (docs / "BRIGHTLINE_2022_10K.txt").write_text("Full filing text of Brightline.")
    exs = load_dataset({"kind": "financebench", "path": str(FIX / "financebench.jsonl"), "docs_dir": str(docs)})
    assert [e.context for e in exs] == ["Full filing text of Acme.", "Full filing text of Brightline."]
    rows = [json.loads(x) for x in (FIX / "financebench.jsonl").read_text().splitlines()]
    del rows[1]["answer"]
    p = _write(tmp_path, rows, "fb.jsonl")
    with pytest.raises(DataError, match=r"fb.jsonl: line 2: missing field 'answer'"):
        load_dataset({"kind": "financebench", "path": str(p)})


def test_qasper_hub_rows_and_original_json_agree():
    hub = load_dataset({"kind": "qasper", "path": str(FIX / "qasper_hub.jsonl")})
    orig = load_dataset({"kind": "qasper", "path": str(FIX / "qasper_original.json")})
    # q-bbb is yes/no only, q-ccc unanswerable: both dropped
    assert [e.id for e in hub] == ["q-aaa", "q-ddd"]
    assert hub == orig
    a, d = hub
    assert a.answers == ("Lumo treebank", "the Lumo treebank") and a.reference == "Lumo treebank"
    assert d.answers == ("3,000, sentences",)
    assert a.context == ("Tiny Parsers for Small Languages\n\nAbstract\nWe train tiny parsers.\n\n"
                         "Introduction\nParsing is hard.\nWe study it.\n\n"
                         "Data\nWe use the Lumo treebank with 3,000 sentences.\n\nThanks to the reviewers.")
    assert a.metadata["paper_id"] == "2101.00001"


def test_fineweb_with_questions_file():
    spec = {"kind": "fineweb", "path": str(FIX / "fineweb.jsonl"), "questions": str(FIX / "fineweb_questions.jsonl")}
    exs = load_dataset(spec)
    doc1, doc2 = "<urn:uuid:0a1b2c3d-0000-4000-8000-000000000001>", "<urn:uuid:0a1b2c3d-0000-4000-8000-000000000002>"
    assert [e.id for e in exs] == [f"{doc2}/q1", f"{doc1}/q1", "fw-custom-id"]
    assert exs[0].context.startswith("Sourdough needs a starter") and exs[0].reference == "Flour and water."
    assert exs[1].answers == ("1952",) and exs[1].metadata["url"] == "http://example.com/lanterns"
    assert _ids(spec) == [e.id for e in exs]


def test_fineweb_token_filter_and_unknown_context(tmp_path):
    q = _write(tmp_path, [{"context_id": "<urn:uuid:0a1b2c3d-0000-4000-8000-000000000003>",
                           "question": "q?", "reference": "r"}], "q.jsonl")
    spec = {"kind": "fineweb", "path": str(FIX / "fineweb.jsonl"), "questions": str(q)}
    assert len(load_dataset(spec)) == 1
    with pytest.raises(DataError, match=r"q.jsonl: line 1: context_id '<urn:uuid:.*0003>' is not in"):
        load_dataset({**spec, "max_token_count": 28000})
    q2 = _write(tmp_path, [{"context_id": "x", "reference": "r"}], "q2.jsonl")
    with pytest.raises(DataError, match=r"q2.jsonl: line 1: missing field 'question'"):
        load_dataset({**spec, "questions": str(q2)})


def test_wildchat(tmp_path):
    spec = {"kind": "wildchat", "path": str(FIX / "wildchat.jsonl"), "questions": str(FIX / "wildchat_questions.jsonl")}
    exs = load_dataset(spec)
    assert [e.id for e in exs] == ["c0ffee03/q1", "c0ffee01/q1"]
    assert exs[0].context == "User: I moved to Bergen last week.\n\nAssistant: Welcome to Bergen! Bring an umbrella."
    assert exs[1].context.count("User:") == 2 and exs[1].reference == "Pebble."
    # filters: English with at least 2 turns keeps only c0ffee01
    with pytest.raises(DataError, match="context_id 'c0ffee03' is not in"):
        load_dataset({**spec, "language": "English", "min_turns": 2})
    # groups of 2 kept (English) conversations form one memory context
    q = _write(tmp_path, [{"context_id": "group-1", "question": "Name of the cat?", "reference": "Pebble"}], "q.jsonl")
    (g,) = load_dataset({**spec, "questions": str(q), "language": "English", "group_size": 2})
    assert g.context.startswith("Conversation 1:\nUser: Suggest a name")
    assert "Conversation 2:\nUser: I moved to Bergen" in g.context and "Hola" not in g.context
    assert g.metadata["conversation_hashes"] == ["c0ffee01", "c0ffee03"]


# ---------------------------------------------------------------------------------- synthetic


def _word_in(phrase: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def test_synthetic_is_deterministic_and_seed_dependent():
    spec = {"kind": "synthetic", "n_patients": 12, "n_questions_per_patient": 3, "seed": 7}
    a, b = load_dataset(spec), load_dataset(spec)
    assert a == b and len(a) == 36
    assert len({e.id for e in a}) == 36 and a[0].id.startswith("synth-s7-p000-")
    # round-robin order: the first 12 examples are 12 different patients, then each again
    assert [e.id[:13] for e in a[:13]] == [f"synth-s7-p{i:03d}" for i in range(12)] + ["synth-s7-p000"]
    assert len({e.context for e in a[:12]}) == 12
    c = load_dataset({**spec, "seed": 8})
    assert [e.context for e in c] != [e.context for e in a]
    assert load_dataset({**spec, "limit": 5}) == a[:5]


def test_synthetic_answer_is_true_and_distractors_are_not():
    from compressbench.data.synthetic import FACTS
    exs = load_dataset({"kind": "synthetic", "n_patients": 30, "n_questions_per_patient": len(FACTS), "seed": 1})
    by_patient: dict[str, list] = {}
    for e in exs:
        by_patient.setdefault(e.metadata["patient"], []).append(e)
        assert len(e.options) == 5 and len(set(e.options)) == 5 and e.answers[0] in "ABCDE"
        correct = e.options["ABCDE".index(e.answers[0])]
        assert correct == e.reference
        assert _word_in(correct, e.context), (e.id, correct)
        assert e.metadata["patient"] in e.question
        for k, opt in enumerate(e.options):
            if k != "ABCDE".index(e.answers[0]):
                assert not _word_in(opt, e.context), (e.id, opt)
    # distractors come from other patients' records when there are enough of them
    values = {f: {e.reference for e in exs if e.metadata["fact"] == f} for f in FACTS}
    for e in exs:
        wrong = set(e.options) - {e.reference}
        if e.metadata["fact"] in ("diagnosis", "medication", "allergy", "physician", "ward"):
            assert wrong <= values[e.metadata["fact"]], e.id
    # every asked fact is asked per patient once, about the patient named in the record
    for name, qs in by_patient.items():
        assert sorted(q.metadata["fact"] for q in qs) == sorted(FACTS)
        assert all(q.context == qs[0].context and q.context.startswith(f"Patient record of {name}.") for q in qs)


def test_synthetic_single_patient_tops_up_from_vocabulary():
    exs = load_dataset({"kind": "synthetic", "n_patients": 1, "n_questions_per_patient": 8, "seed": 0})
    assert all(len(set(e.options)) == 5 and e.reference in e.options for e in exs)


def test_synthetic_contexts_are_short():
    # ~150-300 tokens for a 135M model: keep the record within 90-220 words
    exs = load_dataset({"kind": "synthetic", "n_patients": 40, "seed": 2})
    words = [len(e.context.split()) for e in exs]
    assert 90 <= min(words) and max(words) <= 220
