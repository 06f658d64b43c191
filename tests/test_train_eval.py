"""Training loop and evaluation: the loop lowers the loss and only touches trainable parameters,
metrics agree with real greedy decoding, learning/forgetting arithmetic on hand-made cases.
CPU only, about a minute."""
import math

import pytest
import torch

from peftlab import TrainConfig, apply_method, evaluate, train, world
from peftlab.evaluate import Evaluation, learning_and_forgetting
from peftlab.train import Hook


def test_forgetting_hand_made_case():
    before = Evaluation(target=0.10, source={"source_recall": 0.90, "english_ppl": 20.0})
    after = Evaluation(target=0.70, source={"source_recall": 0.60, "english_ppl": 25.0})
    out = learning_and_forgetting(before, after)
    assert out["learning"] == pytest.approx(0.60)
    assert out["forgetting_source_recall"] == pytest.approx(0.30)
    assert out["forgetting_english_ppl"] == pytest.approx(5.0)  # perplexity: higher after = forgot
    same = learning_and_forgetting(before, before)
    assert same == {"learning": 0.0, "forgetting_source_recall": 0.0, "forgetting_english_ppl": 0.0}


def test_exact_match_agrees_with_generate(tiny_base):
    model, tok = tiny_base
    examples = world.qa_examples(world.source_people()[:12]) + world.get_task("addition").eval_examples(10)
    by_generate = []
    for ex in examples:
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(ex.prompt, add_special_tokens=False)])
        target = tok.encode(ex.target, add_special_tokens=False)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(target),
                             do_sample=False, pad_token_id=tok.pad_token_id)
        by_generate.append(out[0, ids.shape[1]:].tolist() == target)
    assert evaluate.exact_match(model, tok, examples) == pytest.approx(sum(by_generate) / len(examples))
    # one at a time equals batched (padding must not change the answer)
    singles = [evaluate.exact_match(model, tok, [ex]) for ex in examples]
    assert singles == [float(g) for g in by_generate]


def test_choice_accuracy_is_argmax_of_logprobs(tiny_base):
    model, tok = tiny_base
    examples = world.get_task("sentiment").eval_examples(16)
    flipped = [world.Example(ex.prompt, ex.choices[1] if ex.target == ex.choices[0] else ex.choices[0], ex.choices)
               for ex in examples]
    acc, acc_flipped = evaluate.choice_accuracy(model, tok, examples), evaluate.choice_accuracy(model, tok, flipped)
    assert acc + acc_flipped == pytest.approx(1.0)  # two choices: each example is right under exactly one label


def test_perplexity_matches_model_loss(tiny_base):
    model, tok = tiny_base
    text = world.english_paragraphs("heldout")[0]
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(text, add_special_tokens=False)[:255] + [tok.eos_token_id]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert evaluate.perplexity(model, tok, [text]) == pytest.approx(math.exp(float(loss)), rel=1e-4)


LEARNED = 0.05  # the least gain in held-out sentiment accuracy the 40-step run must show (measured: 0.517 -> 0.600)


def test_training_lowers_loss_and_learns(fresh_base):
    model, tok = fresh_base
    apply_method(model, "full")
    task = world.get_task("sentiment")  # held-out sums need longer training than a unit test: 0.0 -> 0.0 here
    before = evaluate.task_metric(model, tok, task, task.eval_examples(60))
    result = train(model, tok, task.train_examples(1000), TrainConfig(steps=40, batch_size=16, lr=1e-3), progress=False)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert result.tokens > 0 and result.seconds > 0
    assert result.grad_bytes == 4 * sum(p.numel() for p in model.parameters())
    assert result.optimizer_state_bytes == 2 * result.grad_bytes  # AdamW: two fp32 moments per parameter
    after = evaluate.task_metric(model, tok, task, task.eval_examples(60))
    assert after >= before + LEARNED, (before, after)


def test_frozen_parameters_do_not_move_and_hooks_run(fresh_base):
    model, tok = fresh_base
    apply_method(model, "full")
    for name, p in model.named_parameters():
        p.requires_grad_(".mlp." in name)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    calls = []

    class Counter(Hook):
        def extra_loss(self, model, step):
            calls.append(("extra", step))
            return torch.zeros(())

        def before_step(self, model, step, optimizer):
            calls.append(("before", step))

        def after_step(self, model, step, optimizer):
            calls.append(("after", step))

    train(model, tok, world.get_task("addition").train_examples(64), TrainConfig(steps=3, batch_size=8),
          hooks=[Counter()], progress=False)
    assert calls == [(k, s) for s in range(3) for k in ("extra", "before", "after")]
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_training_is_seeded(tiny_base):
    from peftlab import load_base

    losses = []
    for _ in range(2):
        model, tok = load_base("tiny")
        apply_method(model, "full")
        losses.append(train(model, tok, world.get_task("sentiment").train_examples(64), TrainConfig(steps=3, batch_size=8),
                            progress=False).losses)
    assert losses[0] == losses[1]


def test_train_refuses_frozen_model(fresh_base):
    model, tok = fresh_base
    apply_method(model, "base")
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, tok, world.get_task("addition").train_examples(8), TrainConfig(steps=1), progress=False)


def test_evaluate_model_samples_equal_the_metrics_on_the_same_samples(tiny_base):
    """``evaluate_model``'s sample sizes pick the first examples, people and paragraphs, as the lectures use them."""
    from peftlab import evaluate, world

    model, tokenizer = tiny_base
    task = world.get_task("sentiment")  # accuracy near chance: one example more or less changes it
    got = evaluate.evaluate_model(model, tokenizer, task, 3, n_target=7, n_paragraphs=2)
    assert got.target == evaluate.task_metric(model, tokenizer, task, task.eval_examples(7))
    assert got.source == {
        "source_recall": evaluate.exact_match(model, tokenizer, world.qa_examples(world.source_people()[:3])),
        "english_ppl": evaluate.perplexity(model, tokenizer, world.english_paragraphs("heldout")[:2])}
