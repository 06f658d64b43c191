"""What a real model knows: a probe of real facts, the source knowledge of a real base.

The tiny world measures forgetting on invented people the base was pretrained on. A real model
(SmolLM2-135M-Instruct, ``load_base("smollm2")``) never saw them, so its forgetting is measured on
what it *does* know: capitals, currencies, authors of famous books, chemical symbols and small sums,
asked through its chat template. ``data/real_facts.txt`` holds the candidate questions with their
true answers, and the answer the base gave when the file was built:

- a fact is *kept* when the base's greedy answer (up to ``MAX_ANSWER_TOKENS`` tokens after the
  answer's first words, e.g. "The capital of France is") contains the true answer, ignoring case;
  the probe's target is then the base's own words up to the end of the true answer (" Paris", " the
  Indian Rupee"), kept only if that target, tokenized again, is what the base's exact match reproduces;
  so the untouched base scores 1.0 by construction and every point lost is a fact fine-tuning made it
  stop saying;
- ``BASE_RECALL`` is the fraction of all candidates the base answered, committed here; the tests ask
  every candidate again and check it (``build_facts`` re-creates the file).

``source_metrics`` is this probe's recall (exact match, as the tiny world's ``source_recall``) plus
perplexity on the course's held-out English paragraphs, so compare and the lectures report forgetting
on a real model exactly as on the tiny one.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .world import DATA_DIR, Example, english_paragraphs

FACTS_FILE = DATA_DIR / "real_facts.txt"
MAX_ANSWER_TOKENS = 8  # greedy tokens the base may write after the answer's first words
MAX_WORDS_BEFORE = 3  # words allowed before the answer ("the South Korean won"), not a later correction
REAL_MODELS = ("smollm2", "smollm2-gguf")  # model names whose source knowledge is this probe
# Measured by build_facts("smollm2") (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to fp32):
BASE_RECALL = {"smollm2": 173 / 255}
# `python -m peftlab compare --model smollm2`: the methods and a budget sized for a 2-core CPU (aim: within
# 20 minutes), at each method's registered learning rate (chosen on the tiny world, not swept here).
COMPARE_METHODS = ("base", "full", "lora", "qlora", "bitfit", "prompt")
COMPARE_STEPS = 30
COMPARE_BATCH_SIZE = 8
# Held-out English paragraphs (cut to PPL_MAX_LENGTH tokens) for the real model's perplexity: a 135M
# model reads them ~35x slower than the tiny base, so fewer and shorter than the tiny world's 100 x 256.
N_PPL_PARAGRAPHS = 24
PPL_MAX_LENGTH = 128

# The documented next steps (hub names, for machines with internet) and the memory estimator's preset
# of each (peftlab.memory.PRESETS: their shapes from each model's config.json), so
# peftlab.memory.estimate sizes them before any download.
NEXT_STEPS = {"HuggingFaceTB/SmolLM2-360M": "smollm2-360m", "HuggingFaceTB/SmolLM2-1.7B": "smollm2-1.7b",
              "Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b"}
NEXT_STEP_METHODS = ("full", "lora", "qlora", "prompt")  # BitFit: these models have (almost) no biases

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "the United Kingdom": "London", "Ireland": "Dublin", "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow",
    "Egypt": "Cairo", "Greece": "Athens", "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Hungary": "Budapest",
    "the Czech Republic": "Prague", "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Canada": "Ottawa",
    "Australia": "Canberra", "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Peru": "Lima",
    "Chile": "Santiago", "Colombia": "Bogotá", "Cuba": "Havana", "Kenya": "Nairobi", "Thailand": "Bangkok",
    "South Korea": "Seoul", "India": "New Delhi", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Saudi Arabia": "Riyadh", "Ukraine": "Kyiv", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Serbia": "Belgrade", "Croatia": "Zagreb", "Switzerland": "Bern", "Iceland": "Reykjavik", "Brazil": "Brasília",
    "Venezuela": "Caracas", "Ecuador": "Quito", "Nigeria": "Abuja", "Ethiopia": "Addis Ababa", "Morocco": "Rabat",
    "Tunisia": "Tunis", "Algeria": "Algiers", "Ghana": "Accra", "Indonesia": "Jakarta", "the Philippines": "Manila",
    "Vietnam": "Hanoi", "Malaysia": "Kuala Lumpur", "Pakistan": "Islamabad", "Afghanistan": "Kabul",
    "New Zealand": "Wellington", "the United States": "Washington", "Scotland": "Edinburgh", "Wales": "Cardiff",
    "Lebanon": "Beirut", "Syria": "Damascus", "Jordan": "Amman", "Nepal": "Kathmandu", "Bangladesh": "Dhaka",
    "Uganda": "Kampala", "Zimbabwe": "Harare", "Senegal": "Dakar", "Latvia": "Riga", "Lithuania": "Vilnius",
    "Estonia": "Tallinn", "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "Qatar": "Doha",
    "Mongolia": "Ulaanbaatar", "Uruguay": "Montevideo", "Paraguay": "Asunción", "Jamaica": "Kingston",
    "Libya": "Tripoli", "Sudan": "Khartoum", "Cyprus": "Nicosia", "Malta": "Valletta",
}
CURRENCIES = {
    "Japan": "yen", "the United Kingdom": "pound", "the United States": "dollar", "India": "rupee",
    "China": "yuan", "Russia": "ruble", "Mexico": "peso", "Brazil": "real", "Switzerland": "franc",
    "South Korea": "won", "Germany": "euro", "France": "euro", "Italy": "euro", "Spain": "euro",
    "Sweden": "krona", "Norway": "krone", "Denmark": "krone", "Poland": "zloty", "Turkey": "lira",
    "South Africa": "rand", "Canada": "dollar", "Australia": "dollar", "Thailand": "baht", "Israel": "shekel",
    "Vietnam": "dong", "Indonesia": "rupiah", "Argentina": "peso", "Egypt": "pound", "Saudi Arabia": "riyal",
    "Hungary": "forint",
}
AUTHORS = {
    "Hamlet": "William Shakespeare", "Romeo and Juliet": "William Shakespeare", "Macbeth": "William Shakespeare",
    "Pride and Prejudice": "Jane Austen", "Emma": "Jane Austen", "War and Peace": "Leo Tolstoy",
    "Anna Karenina": "Leo Tolstoy", "Crime and Punishment": "Fyodor Dostoevsky",
    "The Brothers Karamazov": "Fyodor Dostoevsky", "Nineteen Eighty-Four": "George Orwell",
    "Animal Farm": "George Orwell", "Moby-Dick": "Herman Melville", "Great Expectations": "Charles Dickens",
    "Oliver Twist": "Charles Dickens", "A Tale of Two Cities": "Charles Dickens",
    "The Great Gatsby": "F. Scott Fitzgerald", "To Kill a Mockingbird": "Harper Lee",
    "The Old Man and the Sea": "Ernest Hemingway", "Don Quixote": "Miguel de Cervantes", "The Odyssey": "Homer",
    "The Iliad": "Homer", "Frankenstein": "Mary Shelley", "Dracula": "Bram Stoker", "Ulysses": "James Joyce",
    "The Adventures of Tom Sawyer": "Mark Twain", "Adventures of Huckleberry Finn": "Mark Twain",
    "Harry Potter and the Philosopher's Stone": "J. K. Rowling", "The Hobbit": "Tolkien",
    "The Lord of the Rings": "Tolkien", "Jane Eyre": "Charlotte Brontë", "Wuthering Heights": "Emily Brontë",
    "The Catcher in the Rye": "J. D. Salinger", "Brave New World": "Aldous Huxley",
    "Les Misérables": "Victor Hugo", "The Divine Comedy": "Dante Alighieri", "Faust": "Goethe",
    "One Hundred Years of Solitude": "Gabriel García Márquez", "On the Origin of Species": "Charles Darwin",
    "A Brief History of Time": "Stephen Hawking", "The Raven": "Edgar Allan Poe",
    "Alice's Adventures in Wonderland": "Lewis Carroll", "The Adventures of Sherlock Holmes": "Arthur Conan Doyle",
    "The Time Machine": "H. G. Wells", "The Picture of Dorian Gray": "Oscar Wilde", "Little Women": "Louisa May Alcott",
}
ELEMENTS = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "carbon": "C", "nitrogen": "N", "oxygen": "O",
    "fluorine": "F", "neon": "Ne", "sodium": "Na", "magnesium": "Mg", "aluminium": "Al", "silicon": "Si",
    "phosphorus": "P", "sulfur": "S", "chlorine": "Cl", "argon": "Ar", "potassium": "K", "calcium": "Ca",
    "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag", "gold": "Au", "mercury": "Hg", "lead": "Pb",
    "tin": "Sn", "uranium": "U", "nickel": "Ni", "iodine": "I", "platinum": "Pt", "titanium": "Ti",
    "tungsten": "W", "cobalt": "Co", "boron": "B",
}


@dataclass(frozen=True)
class Fact:
    """One question, the first words of its answer, the true answer and what the base said (``""``: wrong)."""

    category: str
    question: str
    prefix: str  # the answer's first words, written into the assistant turn: "The capital of France is"
    answer: str  # the true answer: "Paris"
    base_answer: str = ""  # the base's greedy words after ``prefix``, up to the end of ``answer``

    @property
    def known(self) -> bool:
        return bool(self.base_answer)


def candidate_facts() -> list[Fact]:
    """Every question the probe asks, before checking which ones the base answers."""
    facts = [Fact("capital", f"What is the capital of {c}?", f"The capital of {c} is", a) for c, a in CAPITALS.items()]
    facts += [Fact("currency", f"What is the currency of {c}?", f"The currency of {c} is", a)
              for c, a in CURRENCIES.items()]
    facts += [Fact("author", f"Who wrote {b}?", f"{b} was written by", a) for b, a in AUTHORS.items()]
    facts += [Fact("element", f"What is the chemical symbol of {e}?", f"The chemical symbol of {e} is", a)
              for e, a in ELEMENTS.items()]
    rng = random.Random(0)
    for _ in range(40):
        x, y = rng.randint(1, 20), rng.randint(1, 20)
        facts.append(Fact("arithmetic", f"What is {x} + {y}?", f"{x} + {y} =", str(x + y)))
    for _ in range(20):
        x, y = rng.randint(2, 9), rng.randint(2, 9)
        facts.append(Fact("arithmetic", f"What is {x} times {y}?", f"{x} times {y} is", str(x * y)))
    return facts


def chat_prompt(tokenizer, fact: Fact) -> str:
    """The question in the model's chat template, with the answer's first words already written.

    ``peftlab.data`` puts the tokenizer's bos token before every prompt; SmolLM2's bos is
    ``<|im_start|>``, the token the template starts with, so it is removed from the text here.
    """
    text = tokenizer.apply_chat_template([{"role": "user", "content": fact.question}], tokenize=False,
                                         add_generation_prompt=True) + fact.prefix
    bos = tokenizer.bos_token or ""
    return text[len(bos):] if bos and text.startswith(bos) else text


def load_facts(path: Path = FACTS_FILE) -> list[Fact]:
    """Every candidate fact with the base's answer, as saved by ``build_facts``."""
    facts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            category, question, prefix, answer, base_answer = line.split("\t")
            facts.append(Fact(category, question, prefix, answer, base_answer))
    return facts


def known_facts(path: Path = FACTS_FILE) -> list[Fact]:
    """The facts the base answered: the probe."""
    return [f for f in load_facts(path) if f.known]


def probe_examples(tokenizer, facts: list[Fact] | None = None) -> list[Example]:
    """The probe as ``Example``s: chat prompt with the answer's first words -> the base's answer."""
    facts = known_facts() if facts is None else facts
    return [Example(chat_prompt(tokenizer, f), " " + f.base_answer) for f in facts]


@torch.no_grad()
def greedy_answers(model, tokenizer, facts: list[Fact], max_new_tokens: int = MAX_ANSWER_TOKENS,
                   batch_size: int = 32) -> list[str]:
    """What ``model`` writes greedily after each fact's chat prompt (left-padded batches)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(facts), batch_size):
        rows = [[tokenizer.bos_token_id] + tokenizer.encode(chat_prompt(tokenizer, f), add_special_tokens=False)
                for f in facts[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return answers


def answered(fact: Fact, text: str) -> str:
    """The words of ``text`` up to the end of the true answer when the answer comes among its first words
    (ignoring case, whole words only: "15" does not answer "5"), else ``""``."""
    found = re.search(r"(?<!\w)" + re.escape(fact.answer) + r"(?!\w)", text, flags=re.IGNORECASE)
    if found is None or len(text[:found.start()].split()) > MAX_WORDS_BEFORE:
        return ""
    return text[:found.end()].strip()


def measure_recall(model, tokenizer, facts: list[Fact] | None = None) -> tuple[float, list[Fact]]:
    """The fraction of ``facts`` (default: every candidate) whose answer ``model`` writes, and the facts
    with what it wrote."""
    facts = candidate_facts() if facts is None else facts
    checked = [Fact(f.category, f.question, f.prefix, f.answer, answered(f, text))
               for f, text in zip(facts, greedy_answers(model, tokenizer, facts))]
    return sum(f.known for f in checked) / max(len(checked), 1), checked


@torch.no_grad()
def exact_hits(model, tokenizer, examples: list[Example], batch_size: int = 32) -> list[bool]:
    """``evaluate.exact_match`` per example, in batches: does greedy decoding reproduce each target?"""
    from .data import IGNORE_INDEX
    from .evaluate import _forward_batches

    was_training = model.training
    model.eval()
    hits = []
    for _, logits, labels in _forward_batches(model, tokenizer, examples, batch_size):
        mask = labels != IGNORE_INDEX
        last = mask.long().cumsum(1).eq(mask.sum(1, keepdim=True)) & mask  # the appended eos is not required
        hits += [bool(ok) for ok in ((logits.argmax(-1) == labels) | ~(mask & ~last)).all(dim=1)]
    model.train(was_training)
    return hits


def drop_untokenizable(model, tokenizer, facts: list[Fact]) -> list[Fact]:
    """Unmark the facts whose saved answer, tokenized again on its own, is not what the base's exact
    match reproduces (text decoded from tokens does not always encode back to the same tokens)."""
    known = [f for f in facts if f.known]
    ok = dict(zip(known, exact_hits(model, tokenizer, probe_examples(tokenizer, known))))
    return [f if ok.get(f, True) else Fact(f.category, f.question, f.prefix, f.answer, "") for f in facts]


def build_facts(model_name: str = "smollm2", path: Path = FACTS_FILE) -> float:
    """Ask the base every candidate question, save the facts with its answers to ``path``, return its recall."""
    from .models import load_base

    model, tokenizer = load_base(model_name)
    recall, facts = measure_recall(model, tokenizer)
    facts = drop_untokenizable(model, tokenizer, facts)
    recall = sum(f.known for f in facts) / len(facts)
    lines = [f"# Real facts for the knowledge probe of {model_name} (peftlab.realworld.build_facts).",
             f"# {sum(f.known for f in facts)} of {len(facts)} answered by the base (recall {recall:.4f}); "
             "an empty last column: the base did not answer it, so it is not in the probe.",
             "# category\tquestion\tanswer prefix\ttrue answer\tthe base's answer"]
    lines += ["\t".join((f.category, f.question, f.prefix, f.answer, f.base_answer)) for f in facts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return recall


def source_metrics(model, tokenizer, n_facts: int | None = None,
                   n_paragraphs: int | None = N_PPL_PARAGRAPHS) -> dict[str, float]:
    """Real knowledge: recall on the probe (exact match; 1.0 for the untouched base) and held-out English
    perplexity (the first ``n_paragraphs`` paragraphs, cut to ``PPL_MAX_LENGTH`` tokens)."""
    from .evaluate import exact_match, perplexity

    return {
        "source_recall": exact_match(model, tokenizer, probe_examples(tokenizer, known_facts()[:n_facts]), batch_size=32),
        "english_ppl": perplexity(model, tokenizer, english_paragraphs("heldout")[:n_paragraphs],
                                  max_length=PPL_MAX_LENGTH),
    }


def forgotten_facts(model, tokenizer, facts: list[Fact] | None = None) -> list[tuple[Fact, str]]:
    """The probe's facts ``model`` no longer answers, each with what it writes instead."""
    facts = known_facts() if facts is None else facts
    lost = [f for f, hit in zip(facts, exact_hits(model, tokenizer, probe_examples(tokenizer, facts))) if not hit]
    return list(zip(lost, greedy_answers(model, tokenizer, lost))) if lost else []
