"""The learning-rate sweep: records, resuming, the committed reference sweep and the rates chosen from
it, the constant schedule that makes a checkpoint equal a shorter run, replay and dropout baselines.
CPU only, about a minute (the CLI test trains four 4-step runs)."""

import pytest
import torch

from peftlab import analysis, cli, world
from peftlab.compare import CompareConfig
from peftlab.data import batches
from peftlab.methods import METHODS, get_method, remove_method
from peftlab.state import peft_state
from peftlab.sweep import REFERENCE, REFERENCE_PATH, lr_grid, read_records


def test_lr_grid_spans_two_decades_around_the_centre():
    grid = lr_grid("lora")
    assert len(grid) == 5 and grid == sorted(grid)
    assert grid[2] == get_method("lora").grid_centre
    assert grid[-1] / grid[0] == pytest.approx(100, rel=1e-3)
    assert all(b / a == pytest.approx(10 ** 0.5, rel=1e-3) for a, b in zip(grid, grid[1:]))
    assert lr_grid("full", n=3) == [1e-4, 1e-3, 1e-2]
    with pytest.raises(KeyError, match="known"):
        lr_grid("no_such_method")


def test_sweep_cli_writes_records_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep.jsonl"
    args = ["sweep", "--methods", "full,lora", "--lrs", "2", "--seeds", "1", "--steps", "4", "--eval-every", "2",
            "--workers", "1", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    records = read_records(out)
    runs = analysis.runs(records)
    assert [r["method"] for r in records].count("base") == 1
    assert len(runs) == 2 * 2 * 1 * 2  # methods x rates x seeds x checkpoints
    assert sorted({(r["method"], r["lr"]) for r in runs}) == [("full", 1e-4), ("full", 1e-2), ("lora", 3e-4), ("lora", 3e-2)]
    for r in runs:
        assert r["step"] in (2, 4) and r["final"] == (r["step"] == 4)
        assert 0.0 <= r["target_test"] <= 1.0 and r["english_ppl"] > 1.0
        assert r["meta"]["command"].startswith("python -m peftlab sweep --methods full,lora")
        assert {"torch", "transformers", "peftlab"} <= set(r["meta"]["versions"])
        assert r["learning_test"] == pytest.approx(r["target_test"] - records[0]["target_test"])
    full = [r for r in runs if r["method"] == "full"]
    lora = [r for r in runs if r["method"] == "lora"]
    assert full[0]["trainable"] == full[0]["total"] and lora[0]["trainable"] < lora[0]["total"] / 10
    text = out.read_text()
    # re-running computes nothing new
    capsys.readouterr()
    assert cli.main(args) == 0
    assert out.read_text() == text
    assert "4 runs (4 already in" in capsys.readouterr().out
    # interrupted: the last run's records are gone and half a line was left behind; only that run is redone
    lines = text.splitlines(keepends=True)
    out.write_text("".join(lines[:-2]) + lines[-1][: len(lines[-1]) // 2])
    assert cli.main(args) == 0
    resumed = analysis.runs(read_records(out))
    assert len(resumed) == len(runs)
    assert "3 already in" in capsys.readouterr().out


def test_sweep_rejects_bad_input(tmp_path):
    assert cli.main(["sweep", "--methods", "base", "--out", str(tmp_path / "x.jsonl"), "--no-progress"]) == 2
    assert cli.main(["sweep", "--methods", "nope", "--out", str(tmp_path / "x.jsonl"), "--no-progress"]) == 2
    assert cli.main(["sweep", "--lrs", "full:1e-3", "--out", str(tmp_path / "x.jsonl"), "--no-progress"]) == 2


@pytest.fixture(scope="module")
def reference():
    records = read_records(REFERENCE_PATH)
    assert records, f"{REFERENCE_PATH.name} is missing: run python -m peftlab sweep --reference"
    return records


def test_reference_sweep_covers_its_design(reference):
    runs = analysis.runs(reference)
    finals = {(r["method"], r["lr"], r["seed"]) for r in runs if r["final"]}
    main = ["full", "lora", "qlora", "houlsby", "pfeiffer", "prompt", "prefix", "bitfit", "fisher", "adalora"]
    assert set(main) <= set(REFERENCE.methods)
    for method in main:
        rates = REFERENCE.rates(method)
        assert len(rates) >= 5 and max(rates) / min(rates) >= 99
        assert {(method, lr, s) for lr in rates for s in REFERENCE.seeds} <= finals, f"{method} is incomplete"
    assert len(REFERENCE.seeds) >= 3 and max(REFERENCE.checkpoints) >= 2 * CompareConfig.steps
    for r in runs:
        assert r["meta"]["commit"] and r["meta"]["command"] == "python -m peftlab sweep --reference"


def test_registered_rates_are_the_reference_sweeps_choice(reference):
    """The rate each method uses is the one the committed sweep chose on the validation split."""
    choices = analysis.choose_lr(analysis.runs(reference), CompareConfig.steps)
    for name, choice in choices.items():
        assert get_method(name).lr == choice.lr, (
            f"{name} is registered with lr {get_method(name).lr} but the reference sweep chose {choice.lr}: "
            "copy the sweep's choices (python -m peftlab frontier) into the registry")
    swept = [m for m in METHODS if METHODS[m].trains and m in REFERENCE.methods]
    assert sorted(swept) == sorted(choices)


def test_constant_schedule_checkpoint_equals_a_shorter_run(tiny_base):
    """With the sweep's schedule, the model after k steps of a long run is the model of a k-step run."""
    import copy

    from peftlab.train import train

    model, tok = tiny_base
    examples = world.get_task("addition").train_examples(64, seed=0)
    cfg = CompareConfig(steps=6, batch_size=4)
    snapshots = {}

    def snapshot(m):
        snapshots[len(snapshots)] = {k: v.clone() for k, v in m.state_dict().items()}
        return {}

    long = copy.deepcopy(model).requires_grad_(True)
    train(long, tok, examples, cfg.train_config("full", eval_at=(3,), warmup=1), eval_fn=snapshot, progress=False)
    short = copy.deepcopy(model).requires_grad_(True)
    train(short, tok, examples, CompareConfig(steps=3, batch_size=4).train_config("full", warmup=1), progress=False)
    diff = max((snapshots[0][k] - v).abs().max().item() for k, v in short.state_dict().items())
    assert diff == 0.0
    # with the cosine schedule the two differ: the check can fail
    cosine = copy.deepcopy(model).requires_grad_(True)
    train(cosine, tok, examples, CompareConfig(steps=3, batch_size=4, schedule="cosine").train_config("full", warmup=1),
          progress=False)
    assert max((snapshots[0][k] - v).abs().max().item() for k, v in cosine.state_dict().items()) > 0


def test_replay_mixes_source_rows_into_every_batch(tiny_base):
    _, tok = tiny_base
    target = world.get_task("addition").train_examples(40, seed=0)
    source = world.source_documents(seed=0)
    assert not {ex.prompt + ex.target for ex in source} & {ex.prompt + ex.target for ex in target}
    assert not set(world.english_paragraphs("heldout")) & {ex.target for ex in source}
    stream = batches(tok, target, 8, seed=0, replay=source, replay_fraction=0.25)
    for _ in range(3):
        batch = next(stream)
        texts = [tok.decode(row[mask.bool()][1:]) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        from_target = sum(t.startswith("Compute:") for t in texts)
        assert len(texts) == 8 and from_target == 6, texts
    with pytest.raises(ValueError, match="replay"):
        next(batches(tok, target, 8, replay=(), replay_fraction=0.5))
    assert dict(get_method("full_replay").train_options)["replay"] == 0.25
    assert CompareConfig().train_config("full_replay").replay == 0.25
    assert CompareConfig().train_config("full_wd").weight_decay == 0.1


def test_full_dropout_is_active_in_training_only(fresh_base):
    model, tok = fresh_base
    batch = next(batches(tok, world.get_task("addition").train_examples(4, seed=0), 4, seed=None))
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    get_method("full_dropout").apply(model)
    assert len(peft_state(model).extras["dropout_hooks"]) == 2 * model.config.num_hidden_layers
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)  # eval mode: no dropout
        model.train()
        a, b = model(**batch).logits, model(**batch).logits
    assert not torch.equal(a, b) and not torch.equal(a, reference)
    get_method("full_dropout").apply(model)  # applying again keeps one set of hooks
    assert len(peft_state(model).extras["dropout_hooks"]) == 2 * model.config.num_hidden_layers
    with pytest.raises(ValueError, match="remove_method"):
        get_method("full").apply(model, dropout=0.3)
    remove_method(model)  # the hooks go: training mode is deterministic again
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**batch).logits)


def test_frontier_page_table_is_reproduced_from_the_reference_sweep(reference):
    """docs/frontier.md's comparison table is exactly what the analysis computes from the committed records."""
    from pathlib import Path

    result = analysis.report(reference, CompareConfig.steps)
    table = analysis.markdown_table(result["choices"], result["matched"], result["trainable_pct"])
    page = (Path(__file__).resolve().parents[1] / "docs" / "frontier.md").read_text()
    assert table in page, ("docs/frontier.md's comparison table differs from `python -m peftlab frontier --markdown`: "
                           "regenerate it")
