"""The tiny world: generators are deterministic per seed, tasks are well-formed, tokenization is
consistent between training and evaluation. CPU only, a few seconds."""
import random

import pytest

from peftlab import world


def test_people_deterministic_and_disjoint():
    assert world.source_people() == world.source_people()
    assert world.make_people(10, seed=1) != world.make_people(10, seed=2)
    source = {p.name for p in world.source_people()}
    new = {p.name for p in world.new_people()}
    assert len(source) == world.N_SOURCE_PEOPLE and len(new) == world.N_NEW_PEOPLE
    assert not source & new, "new people must be unknown to the base"


def test_biography_states_every_attribute_in_varied_forms():
    person = world.source_people()[0]
    bios = {world.biography(person, random.Random(s)) for s in range(20)}
    assert len(bios) > 10, "templates and sentence order should vary"
    for bio in bios:
        for attribute in world.ATTRIBUTES:
            assert person.get(attribute) in bio
        assert bio.count(person.name) == len(world.ATTRIBUTES)
    # same seed, same biography
    assert world.biography(person, random.Random(3)) == world.biography(person, random.Random(3))


@pytest.mark.parametrize("name", list(world.TASKS))
def test_tasks_deterministic_per_seed(name):
    task = world.get_task(name)
    assert task.train_examples(50, seed=1) == task.train_examples(50, seed=1)
    assert task.eval_examples() == task.eval_examples()
    assert len(task.eval_examples(20)) == 20
    if name != "new_people":
        assert task.train_examples(50, seed=1) != task.train_examples(50, seed=2)


def test_addition_is_correct_and_held_out():
    task = world.get_task("addition")
    train = {ex.prompt for ex in task.train_examples(2000, seed=0)}
    for ex in task.eval_examples(200):
        a, b = (int(x) for x in ex.prompt.removeprefix("Compute: ").removesuffix(" =").split(" + "))
        assert int(ex.target) == a + b
        assert ex.prompt not in train, "an evaluation pair leaked into training"


def test_sentiment_negation_flips_label():
    for ex in world.get_task("sentiment").eval_examples(300):
        text = ex.prompt.split("was ", 1)[1].split("\n")[0]
        negated = text.startswith("not ")
        word = text.removeprefix("not ").split()[-1].rstrip(".")
        positive_word = word in world.POSITIVE
        assert (ex.target == world.LABELS[0]) == (positive_word != negated)
        assert ex.target in ex.choices


def test_unknown_task_lists_known():
    with pytest.raises(KeyError, match="addition"):
        world.get_task("translation")


def test_english_split_is_disjoint():
    train, held = world.english_paragraphs("train"), world.english_paragraphs("heldout")
    assert held and train and not set(train) & set(held)
    with pytest.raises(ValueError, match="heldout"):
        world.english_paragraphs("test")


def test_tokenization_at_prompt_target_boundary(tiny_base):
    _, tok = tiny_base
    examples = world.qa_examples(world.source_people()[:20])
    for task in world.TASKS.values():
        examples += task.eval_examples(20)
    for ex in examples:
        joint = tok.encode(ex.prompt + ex.target, add_special_tokens=False)
        split = tok.encode(ex.prompt, add_special_tokens=False) + tok.encode(ex.target, add_special_tokens=False)
        assert joint == split, ex
