"""A seeded, offline research benchmark: fictional companies' filings and news, multi-hop questions.

Each company has a chief executive, a founding year, revenue for 2023 and 2024 (millions of US
dollars), a head count, a supplier (another company of the set) and, for some, an acquisition
of a smaller firm. Each fact is stated in exactly one document:

- ``filing-<co>-2024`` and ``filing-<co>-2023``: annual reports (revenue of that year; the 2024
  one also the head count);
- ``ceo-<co>``: news naming the chief executive and the head office city;
- ``history-<co>``: the founding year and the founder;
- ``supply-<co>``: news that the company signed a supply deal with its supplier;
- ``acq-<co>``: news that the company completed the acquisition of a smaller firm.

Distractor documents share names and numbers without stating a gold fact: ``board-<co>`` (the
chief executive of one company joins the *board* of another), ``outlook-<co>`` (analysts'
2025 revenue forecasts, numbers close to the real ones), and ``rival-<co>`` (a similarly named
company with its own revenue and chief executive).

Questions need facts from 2 or 3 documents (``gold_doc_ids``):

=========  =====================================================================  =========
template   question                                                               documents
=========  =====================================================================  =========
ceo_rev    2024 revenue of the company led by chief executive X                   ceo, filing-2024
sup_emp    employees of the company that supplies X                               supply, filing-2024
acq_year   founding year of the company that acquired X                           acq, history
acq_ceo    chief executive of the company that acquired X                         acq, ceo
acq_sup    2024 revenue of the supplier of the company that acquired X            acq, supply, filing-2024
=========  =====================================================================  =========

Gold answers are exact (numbers as written in the filing, names in full); numeric questions are
scored with :func:`compressbench.measure.metrics.numeric_match` (1% tolerance; the generator keeps all
revenues at least 3% apart and every forecast 4-9% off the real figure), names with token F1.

Option sets (``predictor_mode: loglik``): each question also carries ``n_options`` options, the
gold answer once and ``n_options - 1`` distractors of the same type drawn from the corpus: other
companies' 2024 revenues for a revenue question, other companies' head counts, founding years or
chief executives, in a seeded order (``random.Random("<seed>/<question id>/options")``). A
question's ``evidence`` names, for each gold document, the sentence that states the needed fact.

Everything comes from ``random.Random(seed)``: a seed fixes the corpus, the questions and the options.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from compressbench.core.errors import DataError
from compressbench.agent.research.corpus import Document, Question
from compressbench.core.types import Example

STEMS = (
    "Vantrix", "Oberline", "Caldera", "Mirelle", "Tessaly", "Brakken", "Quorvel", "Halden", "Sundry",
    "Pellucid", "Arvane", "Corvath", "Lumaren", "Drystan", "Fenwick", "Galvora", "Istria", "Jorvik",
    "Keswin", "Larimer", "Montclair", "Norrland", "Ostrava", "Pemberly",
)
SUFFIXES = ("Dynamics", "Foods", "Robotics", "Materials", "Logistics", "Biotech", "Energy", "Textiles",
            "Instruments", "Networks", "Pharma", "Aerospace")
FIRST = ("Mira", "Tobias", "Anneke", "Rafael", "Sunniva", "Dariusz", "Leonie", "Kwame", "Ottilie", "Emrys",
         "Yusra", "Halvard", "Ingrid", "Matthias", "Noor", "Cosimo", "Freya", "Idris", "Marisol", "Stellan",
         "Agnieszka", "Bastian", "Chiara", "Dorian")
LAST = ("Halvorsen", "Achterberg", "Quillon", "Varga", "Delacourt", "Imrie", "Sandoval", "Thistlewood",
        "Okafor", "Brannigan", "Castellanos", "Lindgren", "Moravec", "Nakashima", "Pryce", "Ruiz-Lamberti",
        "Szymanska", "Traverso", "Underhill", "Vukovic", "Whitlock", "Yamada", "Zeller", "Eberhardt")
CITIES = ("Rotterdam", "Tampere", "Porto", "Graz", "Aarhus", "Bilbao", "Ghent", "Brno", "Malmo", "Lyon",
          "Turin", "Gdansk")
TARGET_WORDS = ("Kestrel", "Bramble", "Cobalt", "Juniper", "Marlin", "Solace", "Thistle", "Wren", "Alder",
                "Pinnacle", "Quarry", "Sable")
TARGET_KIND = ("Labs", "Systems", "Analytics", "Components", "Studios", "Works")
TEMPLATES = ("ceo_rev", "sup_emp", "acq_year", "acq_ceo", "acq_sup")


@dataclass(frozen=True)
class Company:
    name: str
    ceo: str
    city: str
    founded: int
    founder: str
    revenue_2023_musd: float
    revenue_2024_musd: float
    employees: int
    supplier: int  # index of the supplying company
    acquired: str | None  # name of the firm it acquired, if any


def _spaced_values(rng: random.Random, n: int, lo: float, hi: float, gap: float) -> list[float]:
    """n values in [lo, hi] with pairwise relative gaps of at least ``gap`` (rounded to 0.1)."""
    out: list[float] = []
    while len(out) < n:
        v = round(rng.uniform(lo, hi), 1)
        if all(abs(v - w) > gap * max(v, w) for w in out):
            out.append(v)
    return out


def _companies(rng: random.Random, n: int) -> list[Company]:
    stems = rng.sample(STEMS, n)
    names = [f"{s} {rng.choice(SUFFIXES)}" for s in stems]
    people = rng.sample([f"{f} {ln}" for f in FIRST for ln in LAST], 2 * n)
    revenues = _spaced_values(rng, 2 * n, 120.0, 980.0, 0.03)
    employees = rng.sample(range(1200, 9800), n)
    suppliers = list(range(n))
    while any(i == s for i, s in enumerate(suppliers)):  # a derangement: nobody supplies itself
        rng.shuffle(suppliers)
    targets = rng.sample([f"{w} {k}" for w in TARGET_WORDS for k in TARGET_KIND], n)
    out = []
    for i in range(n):
        out.append(Company(
            name=names[i], ceo=people[i], city=rng.choice(CITIES), founded=rng.randint(1948, 2012),
            founder=people[n + i], revenue_2023_musd=revenues[n + i], revenue_2024_musd=revenues[i],
            employees=employees[i], supplier=suppliers[i], acquired=targets[i] if i % 2 == 0 else None,
        ))
    return out


def _musd(x: float) -> str:
    return f"${x:,.1f} million"


def _documents(rng: random.Random, cos: list[Company]) -> list[Document]:
    docs: list[Document] = []
    for i, c in enumerate(cos):
        key = f"c{i:02d}"
        docs.append(Document(f"filing-{key}-2024", (
            f"{c.name} reported revenue of {_musd(c.revenue_2024_musd)} for the fiscal year 2024. "
            f"At year end the company employed {c.employees:,} people. Operating costs rose in line with "
            f"volumes and the board proposed an unchanged dividend."), f"{c.name} annual report 2024"))
        docs.append(Document(f"filing-{key}-2023", (
            f"For the fiscal year 2023, {c.name} reported revenue of {_musd(c.revenue_2023_musd)}. "
            f"The company completed a refinancing of its credit facility and opened a second "
            f"distribution centre."), f"{c.name} annual report 2023"))
        docs.append(Document(f"ceo-{key}", (
            f"{c.ceo} is the chief executive officer of {c.name}, which has its head office in {c.city}. "
            f"{c.ceo.split()[0]} took over the role after a long career in operations."),
            f"{c.name} leadership"))
        docs.append(Document(f"history-{key}", (
            f"{c.name} was founded in {c.founded} by {c.founder}. It began as a small workshop and grew "
            f"through a series of regional contracts."), f"History of {c.name}"))
        sup = cos[c.supplier]
        docs.append(Document(f"supply-{key}", (
            f"{c.name} signed a multi-year agreement under which {sup.name} supplies its key components. "
            f"The agreement makes {sup.name} the sole supplier of {c.name}."), f"{c.name} supply agreement"))
        if c.acquired:
            docs.append(Document(f"acq-{key}", (
                f"{c.name} completed the acquisition of {c.acquired}, a smaller firm. {c.acquired} will operate "
                f"as a unit of {c.name}."), f"{c.acquired} acquired"))
        # distractors: share names and numbers, state no gold fact
        other = cos[(i + 1) % len(cos)]
        docs.append(Document(f"board-{key}", (
            f"{c.ceo} joined the supervisory board of {other.name} as an independent member. "
            f"{other.name} said the appointment strengthens its governance."), f"{other.name} board changes"))
        forecast = c.revenue_2024_musd * (1 + rng.choice((-1, 1)) * rng.uniform(0.04, 0.09))
        docs.append(Document(f"outlook-{key}", (
            f"Analysts expect {c.name} to report revenue of about {_musd(forecast)} in 2025, with "
            f"margins under pressure from input costs. Estimates for {other.name} were left unchanged."),
            f"{c.name} analyst outlook"))
        rival = f"{c.name.split()[0]} {rng.choice([s for s in SUFFIXES if s != c.name.split()[1]])}"
        rival_ceo = f"{rng.choice(FIRST)} {c.ceo.split()[1]}"
        docs.append(Document(f"rival-{key}", (
            f"{rival}, not to be confused with {c.name}, is led by {rival_ceo} and reported revenue of "
            f"{_musd(round(rng.uniform(40.0, 110.0), 1))} in 2024."), f"{rival} profile"))
    return docs


#: Which sentence of a gold document states the fact a template needs (index into its sentences).
_FACT_SENTENCE = {"revenue": 0, "employees": 1, "ceo": 0, "history": 0, "supply": 0, "acq": 0}


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", text.strip())


def _value_pools(cos: list[Company]) -> dict[str, list[str]]:
    """Every value of each answer type in the corpus (one per company; the option distractors)."""
    return {"revenue": [_musd(c.revenue_2024_musd) for c in cos], "employees": [f"{c.employees:,}" for c in cos],
            "year": [str(c.founded) for c in cos], "person": [c.ceo for c in cos]}


def _question(t: str, i: int, cos: list[Company], qid: str) -> tuple[Question, str, tuple[tuple[str, str], ...]] | None:
    """(question, its answer type, (gold doc id, fact) pairs) of template ``t`` for company ``i``."""
    c = cos[i]
    key = f"c{i:02d}"
    if t == "ceo_rev":
        return (_q(qid, f"What was the 2024 revenue of the company whose chief executive is {c.ceo}?",
                   _musd(c.revenue_2024_musd), "numeric", (f"ceo-{key}", f"filing-{key}-2024")), "revenue",
                ((f"ceo-{key}", "ceo"), (f"filing-{key}-2024", "revenue")))
    if t == "sup_emp":
        s = c.supplier
        return (_q(qid, f"How many people does the company that supplies {c.name} employ?",
                   f"{cos[s].employees:,}", "numeric", (f"supply-{key}", f"filing-c{s:02d}-2024")), "employees",
                ((f"supply-{key}", "supply"), (f"filing-c{s:02d}-2024", "employees")))
    if c.acquired is None:
        return None
    if t == "acq_year":
        return (_q(qid, f"In which year was the company that acquired {c.acquired} founded?", str(c.founded),
                   "numeric", (f"acq-{key}", f"history-{key}")), "year",
                ((f"acq-{key}", "acq"), (f"history-{key}", "history")))
    if t == "acq_ceo":
        return (_q(qid, f"Who is the chief executive of the company that acquired {c.acquired}?", c.ceo, "f1",
                   (f"acq-{key}", f"ceo-{key}")), "person", ((f"acq-{key}", "acq"), (f"ceo-{key}", "ceo")))
    s = c.supplier
    return (_q(qid, f"What was the 2024 revenue of the supplier of the company that acquired {c.acquired}?",
               _musd(cos[s].revenue_2024_musd), "numeric",
               (f"acq-{key}", f"supply-{key}", f"filing-c{s:02d}-2024")), "revenue",
            ((f"acq-{key}", "acq"), (f"supply-{key}", "supply"), (f"filing-c{s:02d}-2024", "revenue")))


def _q(qid: str, text: str, answer: str, metric: str, gold: tuple[str, ...]) -> Question:
    return Question(Example(id=qid, context="", question=text, answers=(answer,), dataset="research-generated",
                            metadata={"gold_doc_ids": list(gold)}), metric, gold)


def option_set(gold: str, pool: list[str], n_options: int, seed_key: str) -> tuple[str, ...]:
    """``n_options`` options: ``gold`` once and distractors drawn (seeded by ``seed_key``) from the
    other values of ``pool``, in a seeded order; fewer when the pool has fewer other values."""
    rng = random.Random(seed_key)
    others = sorted({v for v in pool if v != gold})
    opts = [gold, *rng.sample(others, min(n_options - 1, len(others)))]
    rng.shuffle(opts)
    return tuple(opts)


def generate_benchmark(seed: int = 0, n_companies: int = 12, n_questions: int = 20, n_options: int = 4
                       ) -> tuple[list[Document], list[Question]]:
    """The corpus (about 9 documents per company) and ``n_questions`` multi-hop questions, each
    with ``n_options`` options (see the module doc) and its evidence sentences.

    Questions cycle through the templates (ceo_rev, sup_emp, acq_year, acq_ceo, acq_sup), each
    over the companies in a seeded order; ids are ``rq-s<seed>-<k, 3 digits>``.
    """
    if not 4 <= n_companies <= len(STEMS):
        raise DataError(f"n_companies must be between 4 and {len(STEMS)}, got {n_companies}")
    if not 2 <= n_options <= n_companies:
        raise DataError(f"n_options must be between 2 and n_companies ({n_companies}), got {n_options}")
    max_q = 2 * n_companies + 3 * ((n_companies + 1) // 2)  # 2 templates for all, 3 more for acquirers
    if not 1 <= n_questions <= max_q:
        raise DataError(f"n_questions must be between 1 and {max_q} for {n_companies} companies, got {n_questions}")
    rng = random.Random(seed)
    cos = _companies(rng, n_companies)
    docs = _documents(rng, cos)
    by_id = {d.id: d for d in docs}
    pools = _value_pools(cos)
    order = {t: rng.sample(range(n_companies), n_companies) for t in TEMPLATES}
    cursor = {t: 0 for t in TEMPLATES}
    questions: list[Question] = []
    k = 0
    while len(questions) < n_questions:
        t = TEMPLATES[k % len(TEMPLATES)]
        k += 1
        while cursor[t] < n_companies:
            i = order[t][cursor[t]]
            cursor[t] += 1
            made = _question(t, i, cos, f"rq-s{seed}-{len(questions):03d}")
            if made is not None:
                q, kind, facts = made
                evidence = tuple((d, _sentences(by_id[d].text)[_FACT_SENTENCE[f]]) for d, f in facts)
                options = option_set(q.example.answers[0], pools[kind], n_options, f"{seed}/{q.id}/options")
                questions.append(Question(q.example, q.metric, q.gold_doc_ids, options, evidence))
                break
    return docs, questions


__all__ = ["TEMPLATES", "generate_benchmark", "option_set"]
