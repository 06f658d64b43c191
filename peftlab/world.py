"""The tiny world: invented people, their biographies, and the target tasks the course fine-tunes on.

Source knowledge follows "Physics of Language Models, Part 3.1: Knowledge Storage and Extraction"
(Allen-Zhu & Li, 2023): every person has fixed attributes; each biography states them with one of
several templates per attribute, in shuffled sentence order, with the full name in every sentence,
and question/answer forms ask for single attributes. Seeing the same fact in varied forms is what
makes it *extractable* by a question rather than only recitable.

Everything here is a pure function of a seed, so data never has to be downloaded or committed:

- ``source_people()``: the people the base model is pretrained on (what forgetting is measured on);
- ``TASKS``: the target tasks (what is learned): ``new_people`` (knowledge injection),
  ``addition`` (a skill) and ``sentiment`` (classification);
- ``english_paragraphs()``: real English prose, shipped in ``peftlab/data/english.txt``, split into a
  pretraining part and a held-out part for the perplexity probe.

An ``Example`` is a (prompt, target) pair: training puts the loss on the target only; evaluation
checks whether greedy decoding after the prompt reproduces the target exactly.
"""
from __future__ import annotations

import random
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .utils import lookup

DATA_DIR = Path(__file__).parent / "data"

FIRST_NAMES = [
    "Ada", "Boris", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Kira",
    "Lars", "Mira", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera",
    "Wim", "Xenia", "Yusuf", "Zora", "Anton", "Bella", "Cyril", "Dora", "Emil", "Fiona", "Gustav",
    "Hanna", "Igor", "Julia", "Karl", "Lena", "Marek", "Nora",
]
LAST_NAMES = [
    "Abbott", "Brandt", "Castillo", "Dubois", "Eriksen", "Falk", "Gallo", "Horvat", "Ivanov",
    "Jansen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quist", "Rossi",
    "Silva", "Tanaka", "Ueda", "Varga", "Weber", "Xu", "Yilmaz", "Zeller", "Arnold", "Bianchi",
    "Costa", "Dahl", "Engel", "Fischer", "Grant", "Holm", "Ito", "Jung", "Keller", "Lund",
    "Meyer", "Nowak",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
CITIES = ["Lisbon", "Oslo", "Kyoto", "Lagos", "Lima", "Vienna", "Dublin", "Cairo", "Quito", "Perth",
          "Seoul", "Prague", "Nairobi", "Havana", "Tunis", "Bergen"]
UNIVERSITIES = ["Ridgefield University", "Harrow Institute", "Eastlake College", "Northvale University",
                "Stonebridge College", "Westmoor Institute", "Pinecrest University", "Silverton College",
                "Brookhaven University", "Clearwater Institute", "Oakmont College", "Redcliff University"]
MAJORS = ["physics", "history", "biology", "economics", "music", "chemistry", "linguistics",
          "geology", "philosophy", "mathematics", "architecture", "medicine"]
EMPLOYERS = ["Acme Robotics", "Bluewave Energy", "Cobalt Mining", "Delta Airways", "Evergreen Foods",
             "Falcon Motors", "Granite Bank", "Horizon Media", "Ivory Textiles", "Juniper Labs",
             "Kestrel Software", "Lumen Optics", "Maple Publishing", "Nimbus Cloud"]

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")

# Several templates per attribute ({n} is the full name, {v} the value): seeing a fact in varied
# forms is what lets a question extract it later (Allen-Zhu & Li, "knowledge augmentation").
BIO_TEMPLATES = {
    "birth_date": ["{n} was born on {v}.", "{n} came into this world on {v}.",
                   "{n} celebrates a birthday on {v}.", "The birth date of {n} is {v}."],
    "birth_city": ["{n} was born in {v}.", "{n} spent early years in {v}.",
                   "{n} grew up in the city of {v}.", "The home town of {n} is {v}."],
    "university": ["{n} studied at {v}.", "{n} graduated from {v}.",
                   "{n} received a degree from {v}.", "{n} attended {v}."],
    "major": ["{n} majored in {v}.", "{n} completed a degree in {v}.",
              "{n} chose {v} as a field of study.", "The subject {n} studied was {v}."],
    "employer": ["{n} works for {v}.", "{n} is employed by {v}.", "{n} took a job at {v}.",
                 "{n} earns a living at {v}."],
}
QUESTIONS = {
    "birth_date": "What is the birth date of {n}?",
    "birth_city": "Which city was {n} born in?",
    "university": "Which university did {n} attend?",
    "major": "What did {n} study?",
    "employer": "Which company does {n} work for?",
}


@dataclass(frozen=True)
class Example:
    """One (prompt, target) pair. Loss and exact match are on ``target`` only.

    ``choices`` (classification) lists the candidate targets; the prediction is the best-scored one.
    """

    prompt: str
    target: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Person:
    name: str
    birth_date: str
    birth_city: str
    university: str
    major: str
    employer: str

    def get(self, attribute: str) -> str:
        lookup(dict.fromkeys(ATTRIBUTES), attribute, "attribute")
        return getattr(self, attribute)


def make_people(n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[Person]:
    """``n`` people with unique names (none in ``exclude``) and random attributes, fixed by ``seed``."""
    rng = random.Random(seed)
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES if f"{first} {last}" not in exclude]
    if n > len(names):
        raise ValueError(f"asked for {n} people but only {len(names)} unused names exist")
    rng.shuffle(names)
    people = []
    for name in names[:n]:
        date = f"{MONTHS[rng.randrange(12)]} {rng.randint(1, 28)}, {rng.randint(1950, 1999)}"
        people.append(Person(name, date, rng.choice(CITIES), rng.choice(UNIVERSITIES),
                             rng.choice(MAJORS), rng.choice(EMPLOYERS)))
    return people


N_SOURCE_PEOPLE = 200
N_NEW_PEOPLE = 40
SOURCE_SEED = 1234
NEW_PEOPLE_SEED = 5678


def source_people() -> list[Person]:
    """The people the base model was pretrained on (the source knowledge)."""
    return make_people(N_SOURCE_PEOPLE, SOURCE_SEED)


def new_people() -> list[Person]:
    """People the base has never seen: the knowledge-injection task teaches them."""
    return make_people(N_NEW_PEOPLE, NEW_PEOPLE_SEED, exclude={p.name for p in source_people()})


def biography(person: Person, rng: random.Random) -> str:
    """One biography: a random template per attribute, sentences in random order."""
    sentences = [rng.choice(BIO_TEMPLATES[a]).format(n=person.name, v=person.get(a)) for a in ATTRIBUTES]
    rng.shuffle(sentences)
    return " ".join(sentences)


def qa_example(person: Person, attribute: str) -> Example:
    """``Q: <question>\\nA:`` -> `` <value>\\n``; the newline ends the answer."""
    return Example(f"Q: {QUESTIONS[attribute].format(n=person.name)}\nA:", f" {person.get(attribute)}\n")


def qa_examples(people: list[Person]) -> list[Example]:
    return [qa_example(p, a) for p in people for a in ATTRIBUTES]


def knowledge_documents(people: list[Person], n_bios_each: int, seed: int) -> list[Example]:
    """Training documents for ``people``: ``n_bios_each`` varied biographies each plus every QA pair."""
    rng = random.Random(seed)
    docs = [Example("", biography(p, rng)) for p in people for _ in range(n_bios_each)]
    docs += qa_examples(people)
    rng.shuffle(docs)
    return docs


def source_documents(seed: int = 0, n_bios_each: int = 1) -> list[Example]:
    """Data like the base's pretraining data, for replay: fresh biographies of the source people,
    their questions, and the English training paragraphs (never the held-out ones)."""
    docs = knowledge_documents(source_people(), n_bios_each, seed)
    docs += [Example("", para) for para in english_paragraphs("train")]
    random.Random(seed).shuffle(docs)
    return docs


# --------------------------------------------------------------------------------- target tasks


SPLITS = ("validation", "test")  # held-out evaluation splits: choose rates on one, report the other


@dataclass
class Task:
    """A target task: a seeded generator of training examples, held-out evaluation splits and a metric.

    Three disjoint splits (a test proves it for every task): ``train_examples`` (what is fine-tuned
    on), ``eval_examples(split="validation")`` (what learning rates are chosen on) and
    ``eval_examples(split="test")`` (what is reported). No evaluation example appears in training.
    ``metric`` is ``"exact_match"`` (greedy decoding reproduces the target) or ``"accuracy"`` (the
    best-scored of ``choices`` is the target). ``make_memorization`` (knowledge tasks only) gives the
    trained questions, whose recall is reported beside learning as memorization.
    """

    name: str
    kind: str
    description: str
    metric: str
    make_train: object = field(repr=False)  # (n, seed) -> list[Example]
    make_eval: object = field(repr=False)  # (split, n, seed) -> list[Example]
    make_memorization: object = field(default=None, repr=False)  # () -> list[Example] or None

    def train_examples(self, n: int, seed: int = 0) -> list[Example]:
        return self.make_train(n, seed)

    def eval_examples(self, n: int | None = 200, seed: int = 10_000, split: str = "test") -> list[Example]:
        """The first ``n`` examples (``None``: all; fewer if the split is smaller) of a held-out split."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r} "
                             "(training examples come from train_examples)")
        return self.make_eval(split, n, seed)

    def memorization_examples(self) -> list[Example]:
        """Trained questions (knowledge tasks), or an empty list when the task has none."""
        return self.make_memorization() if self.make_memorization else []


def _stable_bucket(text: str, buckets: int = 5) -> int:
    """A hash of ``text`` that is the same in every process (Python's ``hash`` of a str is not)."""
    return zlib.crc32(text.encode()) % buckets


# Knowledge injection, split as in Allen-Zhu & Li (Part 3.1): the biographies of *all* new people are
# trained on, and the questions of only the first half; learning is measured on the questions of the
# others (extraction: answering a question about a fact seen only in biographies), on a validation and
# a test quarter of the people. Recall on the trained questions is reported as memorization.
N_QA_TRAINED = N_NEW_PEOPLE // 2
N_VALIDATION_PEOPLE = N_NEW_PEOPLE // 4


def new_people_split(split: str) -> list[Person]:
    """``"train"`` (questions trained on), ``"validation"`` or ``"test"`` (questions held out)."""
    people = new_people()
    bounds = {"train": (0, N_QA_TRAINED), "validation": (N_QA_TRAINED, N_QA_TRAINED + N_VALIDATION_PEOPLE),
              "test": (N_QA_TRAINED + N_VALIDATION_PEOPLE, N_NEW_PEOPLE)}
    if split not in bounds:
        raise ValueError(f"split must be one of {', '.join(bounds)}, not {split!r}")
    return people[slice(*bounds[split])]


def _new_people_train(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    docs = [Example("", biography(p, rng)) for p in new_people() for _ in range(4)]
    docs += qa_examples(new_people_split("train"))
    rng.shuffle(docs)
    return [docs[i % len(docs)] if i < len(docs) else rng.choice(docs) for i in range(n)]


def _new_people_eval(split: str, n: int | None, seed: int) -> list[Example]:
    return qa_examples(new_people_split(split))[:n]


def addition_example(a: int, b: int) -> Example:
    return Example(f"Compute: {a} + {b} =", f" {a + b}\n")


def _addition_split(a: int, b: int) -> str:
    # Pairs with (a * 7 + b) % 5 == 0 are held out (a fifth of them), halved by the parity of a + b.
    if (a * 7 + b) % 5:
        return "train"
    return "validation" if (a + b) % 2 == 0 else "test"


def _addition_train(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        if _addition_split(a, b) == "train":
            out.append(addition_example(a, b))
    return out


def _addition_eval(split: str, n: int | None, seed: int) -> list[Example]:
    pairs = [(a, b) for a in range(50) for b in range(50) if _addition_split(a, b) == split]
    random.Random(seed).shuffle(pairs)  # every held-out pair once, in a seeded order
    return [addition_example(a, b) for a, b in pairs[:n]]


POSITIVE = ["good", "great", "lovely", "wonderful", "excellent", "pleasant", "superb", "delightful"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "horrible", "disappointing"]
ITEMS = ["film", "meal", "book", "concert", "hotel", "game", "lecture", "trip", "show", "album"]
INTENSIFIERS = ["", "really ", "very ", "quite ", "truly "]
LABELS = (" positive\n", " negative\n")


def sentiment_example(rng: random.Random) -> Example:
    """A review whose label flips under negation: the model must compose ``not`` with the adjective."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.35
    word = rng.choice(POSITIVE if positive != negated else NEGATIVE)
    text = f"The {rng.choice(ITEMS)} was {'not ' if negated else ''}{rng.choice(INTENSIFIERS)}{word}."
    return Example(f"Review: {text}\nSentiment:", LABELS[0] if positive else LABELS[1], LABELS)


def _sentiment_split(example: Example) -> str:
    # Each distinct review text (1,600 exist) belongs to one split: a fifth validation, a fifth test.
    bucket = _stable_bucket(example.prompt)
    return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


def _sentiment_draw(n: int, seed: int, split: str) -> list[Example]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        example = sentiment_example(rng)
        if _sentiment_split(example) == split:
            out.append(example)
    return out


def _sentiment_eval(split: str, n: int | None, seed: int) -> list[Example]:
    # distinct reviews, drawn with the task's label balance and negation rate
    texts: dict[str, Example] = {}
    for example in _sentiment_draw(4 * (n or 200), seed, split):
        texts.setdefault(example.prompt, example)
    return list(texts.values())[:n]


TASKS: dict[str, Task] = {
    "new_people": Task("new_people", "knowledge injection",
                       f"learn the biographies of {N_NEW_PEOPLE} new people; QA exact match on the people "
                       "whose questions were not trained (extraction)",
                       "exact_match", _new_people_train, _new_people_eval,
                       lambda: qa_examples(new_people_split("train"))),
    "addition": Task("addition", "skill", "add two numbers below 50; exact match on held-out pairs",
                     "exact_match", _addition_train, _addition_eval),
    "sentiment": Task("sentiment", "classification",
                      "label a short review positive/negative (with negation); accuracy on held-out reviews",
                      "accuracy", lambda n, s: _sentiment_draw(n, s, "train"), _sentiment_eval),
}


def get_task(name: str) -> Task:
    return lookup(TASKS, name, "task")


# --------------------------------------------------------------------------------- English text


def english_paragraphs(split: str = "all") -> list[str]:
    """Real English prose from ``data/english.txt``: ``"train"`` (pretraining), ``"heldout"`` (every
    fifth paragraph, never trained on: the perplexity probe) or ``"all"``."""
    lines = (DATA_DIR / "english.txt").read_text().splitlines()
    paras = [line for line in lines if line and not line.startswith("#")]
    if split == "all":
        return paras
    if split == "heldout":
        return paras[::5]
    if split == "train":
        return [p for i, p in enumerate(paras) if i % 5]
    raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")


def _prose(text: str, min_len: int, min_letters: float) -> list[str]:
    """Paragraphs of ``text`` that read as prose: not indented (code), long enough, start upper-case,
    end with a period, mostly letters and spaces; ASCII-folded."""
    folds = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-",
             "\u2026": "..."}
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.startswith(" ") or ">>>" in para:
            continue
        para = " ".join(para.split())
        for a, b in folds.items():
            para = para.replace(a, b)
        para = unicodedata.normalize("NFKD", para).encode("ascii", "ignore").decode()
        if len(para) < min_len or not para[0].isupper() or not para.endswith("."):
            continue
        if sum(c.isalpha() or c == " " for c in para) / len(para) > min_letters:
            out.append(para)
    return out


def extract_english_text(path: Path = DATA_DIR / "english.txt") -> int:
    """Re-create ``data/english.txt`` from the documentation that ships with CPython itself.

    Two sources, both real English written by people: the Python Language Reference
    (``pydoc_data.topics``) and the docstrings of the standard library's public modules, classes and
    functions. Keeps prose paragraphs only, de-duplicated. Returns the number of paragraphs. The
    committed file is the source of truth (the wording changes slightly between Python versions).
    """
    import importlib
    import inspect
    import sys
    import warnings

    import pydoc_data.topics as topics

    texts = [topics.topics[key] for key in sorted(topics.topics)]
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
            "venv", "pydoc_data"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in skip:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # platform-specific modules
                continue
            objects = [module] + [obj for _, obj in inspect.getmembers(module)
                                  if (inspect.isclass(obj) or inspect.isfunction(obj))
                                  and getattr(obj, "__module__", None) == name]
            for obj in objects:
                members = [m for _, m in inspect.getmembers(obj, inspect.isfunction)] if inspect.isclass(obj) else []
                texts += [inspect.getdoc(o) or "" for o in [obj, *members]]
    paras: list[str] = []
    seen: set[str] = set()
    for text in texts:
        for para in _prose(text, min_len=120, min_letters=0.9):
            if para not in seen:
                seen.add(para)
                paras.append(para)
    header = ("# Real English prose for pretraining and the held-out perplexity probe: paragraphs of the Python\n"
              f"# Language Reference and of the standard library's docstrings, as shipped with CPython "
              f"{sys.version.split()[0]}.\n# Copyright Python Software Foundation, PSF License. Regenerate with: "
              "python -m peftlab english-text. One paragraph per line.\n")
    path.write_text(header + "\n".join(paras) + "\n")
    return len(paras)
