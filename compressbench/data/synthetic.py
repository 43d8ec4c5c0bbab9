"""A seeded synthetic dataset in the spirit of LongHealth, used by the offline demo.

Each fictional patient gets a short record (a few sentences, about 150-250 tokens for a
SmolLM2-style tokenizer) stating facts: name, age, ward, admission date, attending physician,
diagnosis, medication, dose and allergy, plus vital signs and background that are never asked.
For each patient, ``n_questions_per_patient`` facts are asked as 5-option multiple-choice
questions (options A-E). The correct option is the patient's own value, stated word for word
in the context; the four distractors are the same fact's values in *other* patients' records
(sorted, then sampled), topped up from the fact's vocabulary when too few distinct values
exist. A distractor is never the patient's value and never appears in the patient's record.

Everything is drawn from ``random.Random(seed)``, so a seed fixes the dataset exactly.
Example ids: ``synth-s<seed>-p<patient index, 3 digits>-<fact>``. Order: round-robin, the
first question of every patient, then the second of every patient, ...; so any prefix (a
``limit``) of n examples holds min(n, n_patients) distinct contexts, as the MI estimate needs.
answers = (correct letter,); reference = the correct option's text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from compressbench.core.errors import DataError
from compressbench.core.types import Example

FIRST_NAMES = (
    "Amara", "Bruno", "Celia", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaito", "Lena",
    "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Stefan", "Talia", "Umar", "Vera", "Wendell", "Yara",
)
LAST_NAMES = (
    "Albrecht", "Bergstrom", "Castellano", "Delacroix", "Eriksen", "Fontaine", "Galloway", "Haverkamp",
    "Iwasaki", "Jaramillo", "Kowalczyk", "Lindqvist", "Moreau", "Novak", "Okonkwo", "Petrakis", "Quintero",
    "Rasmussen", "Szabo", "Thorvaldsen", "Ulbrich", "Vasquez", "Whitcombe", "Zielinski",
)
DOCTORS = (
    "Dr. Ansel Marchetti", "Dr. Beatrix Holloway", "Dr. Cyrus Abernathy", "Dr. Delphine Osei",
    "Dr. Emeric Vantongeren", "Dr. Fenna Brightwater", "Dr. Gideon Ashworth", "Dr. Hedda Kallström",
    "Dr. Ivo Pennington", "Dr. Juno Ferreira-Blake",
)
WARDS = (
    "cardiology ward", "neurology ward", "pulmonology ward", "gastroenterology ward", "nephrology ward",
    "endocrinology ward", "infectious diseases ward", "rheumatology ward", "haematology ward", "geriatric ward",
)
DIAGNOSES = (
    "community-acquired pneumonia", "atrial fibrillation", "type 2 diabetes mellitus", "acute pancreatitis",
    "ischaemic stroke", "deep vein thrombosis", "chronic kidney disease", "rheumatoid arthritis",
    "iron deficiency anaemia", "ulcerative colitis", "congestive heart failure", "pulmonary embolism",
    "hypothyroidism", "bacterial meningitis", "acute cholecystitis", "sarcoidosis",
)
MEDICATIONS = (
    "apixaban", "metformin", "levothyroxine", "ceftriaxone", "furosemide", "methotrexate", "bisoprolol",
    "mesalazine", "enoxaparin", "atorvastatin", "prednisolone", "ferrous sulfate", "amiodarone",
    "pantoprazole", "ramipril", "dexamethasone",
)
DOSES = (
    "5 mg once daily", "10 mg twice daily", "20 mg once daily", "40 mg in the evening", "75 mg once daily",
    "100 mg twice daily", "250 mg three times daily", "500 mg twice daily", "850 mg with meals",
    "1 g every twelve hours", "2 g once daily", "15 mg once weekly",
)
ALLERGIES = (
    "penicillin", "latex", "peanuts", "shellfish", "sulfonamides", "iodinated contrast", "bee stings",
    "aspirin", "codeine", "eggs", "adhesive tape", "ibuprofen",
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
SYMPTOMS = (
    "shortness of breath", "chest pain", "a persistent fever", "abdominal pain", "sudden weakness",
    "swelling of the left leg", "fatigue and dizziness", "joint pain", "a severe headache", "weight loss",
)
OCCUPATIONS = ("teacher", "carpenter", "nurse", "bus driver", "accountant", "librarian", "chef", "farmer",
               "retired engineer", "postal worker")
LIVING = ("alone", "with a partner", "with two children", "with an elderly parent", "in a shared flat")


@dataclass(frozen=True)
class _Fact:
    """One askable fact: how to phrase its question, and its vocabulary for topping up distractors."""

    question: Callable[[dict[str, str]], str]
    vocabulary: Callable[[], tuple[str, ...]]


def _all_dates() -> tuple[str, ...]:
    return tuple(f"{d} {m} {y}" for y in (2021, 2022, 2023) for m in MONTHS for d in (3, 9, 14, 21, 27))


FACTS: dict[str, _Fact] = {
    "diagnosis": _Fact(lambda p: f"What was {p['name']} diagnosed with?", lambda: DIAGNOSES),
    "medication": _Fact(lambda p: f"Which medication was {p['name']} started on?", lambda: MEDICATIONS),
    "dose": _Fact(lambda p: f"What dose of {p['medication']} was prescribed to {p['name']}?", lambda: DOSES),
    "allergy": _Fact(lambda p: f"What is {p['name']} allergic to?", lambda: ALLERGIES),
    "admission_date": _Fact(lambda p: f"On which date was {p['name']} admitted?", _all_dates),
    "age": _Fact(lambda p: f"How old is {p['name']}?", lambda: tuple(f"{a} years" for a in range(24, 91))),
    "physician": _Fact(lambda p: f"Who is the attending physician of {p['name']}?", lambda: DOCTORS),
    "ward": _Fact(lambda p: f"To which ward was {p['name']} admitted?", lambda: WARDS),
}


def _patient(rng: random.Random, name: str) -> dict[str, str]:
    return {
        "name": name,
        "age": f"{rng.randint(24, 90)} years",
        "ward": rng.choice(WARDS),
        "admission_date": rng.choice(_all_dates()),
        "physician": rng.choice(DOCTORS),
        "diagnosis": rng.choice(DIAGNOSES),
        "medication": rng.choice(MEDICATIONS),
        "dose": rng.choice(DOSES),
        "allergy": rng.choice(ALLERGIES),
        "symptom": rng.choice(SYMPTOMS),
        "occupation": rng.choice(OCCUPATIONS),
        "living": rng.choice(LIVING),
        "bp": f"{rng.randint(105, 165)}/{rng.randint(60, 99)} mmHg",
        "hr": str(rng.randint(52, 118)),
        "temp": f"{rng.randint(362, 395) / 10:.1f}",
        "weeks": str(rng.randint(2, 8)),
    }


def patient_record(p: dict[str, str]) -> str:
    """The context text for one patient: every asked fact stated verbatim."""
    first = p["name"].split()[0]
    return (
        f"Patient record of {p['name']}. {p['name']}, {p['age']} old, was admitted to the {p['ward']} "
        f"on {p['admission_date']} with {p['symptom']}. The attending physician, {p['physician']}, "
        f"examined {first} and made the diagnosis of {p['diagnosis']}. Treatment was started with "
        f"{p['medication']} at a dose of {p['dose']}. The chart lists an allergy to {p['allergy']}, so "
        f"staff must avoid it. On admission the blood pressure was {p['bp']}, the heart rate "
        f"{p['hr']} beats per minute and the temperature {p['temp']} degrees Celsius. {first} works as "
        f"a {p['occupation']} and lives {p['living']}. A follow-up visit is planned in {p['weeks']} weeks "
        f"to review the response to {p['medication']}."
    )


def generate_synthetic(n_patients: int = 20, n_questions_per_patient: int = 4, seed: int = 0,
                       n_options: int = 5, dataset: str = "synthetic") -> list[Example]:
    """The synthetic multiple-choice dataset: ``n_patients * n_questions_per_patient`` examples.

    Deterministic for given arguments. Raises DataError on impossible sizes.
    """
    for name, value, lo, hi in (("n_patients", n_patients, 1, len(FIRST_NAMES) * len(LAST_NAMES)),
                                ("n_questions_per_patient", n_questions_per_patient, 1, len(FACTS)),
                                ("n_options", n_options, 2, 5)):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise DataError(f"synthetic {name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataError(f"synthetic seed must be an integer, got {seed!r}")
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], n_patients)
    patients = [_patient(rng, n) for n in names]
    letters = "ABCDE"[:n_options]
    per_patient: list[list[Example]] = []
    for i, p in enumerate(patients):
        examples: list[Example] = []
        context = patient_record(p)
        for fact in rng.sample(sorted(FACTS), n_questions_per_patient):
            truth = p[fact]
            others = sorted({q[fact] for j, q in enumerate(patients) if j != i} - {truth})
            others = [v for v in others if v not in context]
            n_d = n_options - 1
            distractors = rng.sample(others, min(n_d, len(others)))
            if len(distractors) < n_d:
                pool = sorted(set(FACTS[fact].vocabulary()) - {truth} - set(distractors))
                pool = [v for v in pool if v not in context]
                distractors += rng.sample(pool, n_d - len(distractors))
            options = distractors + [truth]
            rng.shuffle(options)
            letter = letters[options.index(truth)]
            examples.append(Example(
                id=f"synth-s{seed}-p{i:03d}-{fact}", context=context, question=FACTS[fact].question(p),
                answers=(letter,), options=tuple(options), reference=truth, dataset=dataset,
                metadata={"patient": p["name"], "fact": fact, "seed": seed},
            ))
        per_patient.append(examples)
    # Round-robin over patients, so the first n examples have min(n, n_patients) distinct contexts
    # (the MI estimate needs distinct contexts; a `limit` keeps that true).
    return [per_patient[i][k] for k in range(n_questions_per_patient) for i in range(n_patients)]


def from_spec(spec: Mapping[str, Any], dataset: str, **opts: Any) -> list[Example]:
    """The ``synthetic`` entry of :data:`compressbench.data.DATASETS`: a checked dataset spec -> Examples."""
    return generate_synthetic(seed=spec.get("seed") or 0, dataset=dataset, **opts)
