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
    assert task.eval_examples(split="validation") == task.eval_examples(split="validation")
    assert len(task.eval_examples(20)) == 20
    if name != "new_people":
        assert task.train_examples(50, seed=1) != task.train_examples(50, seed=2)


def leaks(task, train, evaluation) -> list[str]:
    """Evaluation examples whose text appears in training: the whole example, its prompt, and for
    knowledge tasks the question asked anywhere in a training text."""
    train_texts = {ex.prompt + ex.target for ex in train}
    train_prompts = {ex.prompt for ex in train}
    found = [ex.prompt + ex.target for ex in evaluation if ex.prompt + ex.target in train_texts or ex.prompt in train_prompts]
    if task.kind == "knowledge injection":
        corpus = "\n".join(sorted(train_texts))
        found += [ex.prompt for ex in evaluation
                  if ex.prompt.startswith("Q: ") and ex.prompt.removeprefix("Q: ").removesuffix("\nA:") in corpus]
    return found


@pytest.mark.parametrize("name", list(world.TASKS))
def test_evaluation_never_appears_in_training(name):
    """Every split of every task is held out: no validation or test example (nor, for knowledge
    injection, any question about a held-out person) is in the training data, for any seed."""
    task = world.get_task(name)
    validation, test = task.eval_examples(None, split="validation"), task.eval_examples(None, split="test")
    assert len(validation) >= 50 and len(test) >= 50
    assert not {e.prompt for e in validation} & {e.prompt for e in test}, "validation and test overlap"
    for seed in (0, 1, 7):
        train = task.train_examples(2000, seed=seed)
        assert leaks(task, train, validation) == [] and leaks(task, train, test) == []
    # the check can fail: one training example planted in the evaluation set is found
    planted = task.train_examples(5, seed=3)[-1]
    assert leaks(task, task.train_examples(2000, seed=0), test + [planted]) == [planted.prompt + planted.target]


def test_new_people_design_follows_allen_zhu_li():
    """Biographies of every new person are trained; questions only of the first half; the held-out
    questions (validation, test) ask about people known only from their biographies."""
    task = world.get_task("new_people")
    train = task.train_examples(2000, seed=0)
    bios = " ".join(ex.target for ex in train if not ex.prompt)
    questioned = {ex.prompt for ex in train if ex.prompt}
    for person in world.new_people():
        assert person.name in bios, f"{person.name} has no training biography"
    trained = set(world.new_people_split("train"))
    held = world.new_people_split("validation") + world.new_people_split("test")
    assert not trained & set(held) and len(trained) + len(held) == world.N_NEW_PEOPLE
    assert questioned == {ex.prompt for ex in world.qa_examples(sorted(trained, key=lambda p: p.name))}
    assert {ex.prompt for ex in task.memorization_examples()} == questioned
    assert world.get_task("addition").memorization_examples() == []
    with pytest.raises(ValueError, match="validation"):
        task.eval_examples(split="train")


def test_addition_is_correct():
    task = world.get_task("addition")
    for ex in task.eval_examples(200) + task.eval_examples(200, split="validation"):
        a, b = (int(x) for x in ex.prompt.removeprefix("Compute: ").removesuffix(" =").split(" + "))
        assert int(ex.target) == a + b


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
