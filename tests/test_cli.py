"""The command line: ``compare`` writes its table, JSON and plot; bad input gets a clear error.
CPU only, about half a minute."""
import csv
import json
import subprocess
import sys

import pytest

from peftlab.cli import main


def test_compare_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["compare", "--steps", "4", "--task", "sentiment", "--out", str(tmp_path), "--no-progress",
                 "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert "full" in printed and "base" in printed
    assert "| method | lr | trainable | accuracy (target) |" in printed and "\n| full | " in printed
    rows = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [r["method"] for r in rows][:2] == ["base", "full"]
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["meta"]["command"].startswith("python -m peftlab compare --task sentiment --steps 4")
    base, full = data["rows"][0], data["rows"][1]
    assert base["trainable"] == 0 and base["learning"] == 0 and base["forgetting_source_recall"] == 0
    assert full["trainable_pct"] == pytest.approx(100.0)
    assert full["grad_bytes"] == 4 * full["trainable"]  # fp32 gradients for every weight
    # AdamW: two fp32 moments, counted once (memory.optimizer_state_bytes) by the loop and by the probe alike
    assert full["optimizer_bytes"] == full["mem_optimizer_bytes"] == 8 * full["trainable"]
    # the memory probe's columns: the same gradient bytes as the loop held, activations measured
    assert full["mem_grad_bytes"] == full["grad_bytes"] and full["mem_activation_bytes"] > 0
    assert base["mem_grad_bytes"] == 0 and base["mem_weight_bytes"] == full["mem_weight_bytes"]
    assert (tmp_path / "learning_vs_forgetting.png").stat().st_size > 10_000


def test_real_model_page_smollm2_table_is_the_committed_run():
    """docs/real_model.md's SmolLM2 table is ``markdown_table`` of ``docs/smollm2_compare.json``, a run of the default
    ``compare --model smollm2`` command (methods, steps, batch size) that took at most 20 minutes."""
    from pathlib import Path

    from peftlab import realworld
    from peftlab.compare import markdown_table

    root = Path(__file__).resolve().parents[1]
    result = json.loads((root / "docs" / "smollm2_compare.json").read_text())
    meta = result["meta"]
    assert meta["config"]["model"] == "smollm2" and meta["config"]["steps"] == realworld.COMPARE_STEPS
    assert meta["config"]["batch_size"] == realworld.COMPARE_BATCH_SIZE
    assert [row["method"] for row in result["rows"]] == list(realworld.COMPARE_METHODS)
    assert meta["seconds"] <= 20 * 60, f"the committed run took {meta['seconds']} s, over the 20 minutes promised"
    page = (root / "docs" / "real_model.md").read_text()
    assert markdown_table(result) in page, "docs/real_model.md's SmolLM2 table differs from docs/smollm2_compare.json"
    assert f"**{meta['seconds']:.0f} s" in page
    # the prose's cost ratios are the committed run's, not retyped
    rows = {row["method"]: row for row in result["rows"]}
    def to_full(method, key):
        return f"{rows[method][key] / rows['full'][key]:.2f}x"

    assert (f"LoRA's\nstep takes {to_full('lora', 'seconds_per_step')} and QLoRA's {to_full('qlora', 'seconds_per_step')}"
            in page), "docs/real_model.md's step-time ratios differ from docs/smollm2_compare.json"
    assert f"take {to_full('lora', 'train_bytes')} and {to_full('qlora', 'train_bytes')} of full fine-tuning's bytes" in page


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", "--methods", "full,lorax", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'lorax'" in err and "full" in err
    assert not (tmp_path / "compare.csv").exists(), "nothing should run before the names are checked"


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    assert "full" in capsys.readouterr().out


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "peftlab", "--help"], capture_output=True, text=True, check=True)
    assert "compare" in out.stdout and "pretrain" in out.stdout
