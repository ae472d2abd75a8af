"""The LoRA sweep: the shipped grid parses, and a real two-run sweep writes sweep.json / .md / .png that agree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlm_sft.cli import main as cli_main
from vlm_sft.cli import parse_command
from vlm_sft.cli.sweep import overrides
from vlm_sft.evaluation import sweep
from vlm_sft.evaluation.plots import plot_sweep
from vlm_sft.evaluation.sweep import SweepSpec, check_configs, expand, load_sweep, verdicts

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "recipes" / "sweeps" / "lora_rank_targets.yaml"


def test_shipped_sweep_is_the_lessons_grid_and_every_run_parses():
    spec = load_sweep(SHIPPED)
    configs = expand(spec)
    assert [c["name"] for c in configs] == [
        "r4-qv", "r4-attention", "r16-qv", "r16-attention", "r64-qv", "r64-attention",
    ]  # fmt: skip
    assert all(c["params"]["lora_alpha"] == 2 * c["params"]["lora_r"] for c in configs)
    assert spec.base_recipe == "recipes/quickstart.yaml"
    check_configs(spec, configs)  # each run's recipe, overrides included, through the trainer's parser
    header = SHIPPED.read_text().splitlines()[:20]
    assert header[0].startswith("#") and any("scripts/sweep_lora.py" in line for line in header)
    epochs = spec.overrides["num_train_epochs"]
    assert any(f"94 steps per epoch x {epochs} epochs = {94 * epochs} steps" in line for line in header)


def test_unknown_keys_are_errors_that_name_them(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED.read_text() + "\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_sweep(bad)
    spec = load_sweep(SHIPPED)
    spec.overrides = {"evaluation_strategy": "epoch"}
    with pytest.raises(ValueError, match="evaluation_strategy"):
        check_configs(spec, expand(spec)[:1])
    with pytest.raises(ValueError, match="grid"):
        SweepSpec(base_recipe="r.yaml", grid={"lora_r": []})


def _run(name, steps, wall, final, score=None):
    return {"name": name, "steps_to_threshold": steps, "wall_seconds": wall, "final_loss": final} | {
        "eval_score": score,
        "steps": 100,
    }


def test_verdicts_fewest_steps_and_lowest_final_loss_ties_named_not_broken_by_time():
    run = _run
    runs = [run("a", None, 5, 0.2, 0.9), run("b", 40, 30, 0.4), run("c", 40, 20, 0.5), run("d", 60, 1, 0.3)]
    got = verdicts(runs, base_score=0.1)
    assert got == {
        "fastest_converging": None,  # b and c both at step 40: a tie, whatever their wall time
        "best_final_loss": "a",
        "best_eval_score": "a",
        "ties": {"fastest_converging": ["b", "c"]},
    }
    assert verdicts(runs[1:2] + runs[3:])["fastest_converging"] == "b"
    assert verdicts([run("a", None, 5, 0.2)])["fastest_converging"] is None


def test_no_best_eval_score_among_ties_or_below_the_base():
    tied_at_zero = [_run("r4-qv", 10, 1, 0.2, 0.0), _run("r8-qv", 20, 1, 0.3, 0.0)]
    got = verdicts(tied_at_zero, base_score=0.05)
    assert got["best_eval_score"] is None and "best_eval_score" not in got["ties"]
    result = {"base_eval_score": 0.05, "runs": tied_at_zero, **got}
    lines = sweep._verdict_lines(result, {r["name"]: r for r in tied_at_zero}, 1.0)
    assert "Best eval score" not in "\n".join(lines)
    assert lines[-1] == (
        "- Eval score: no best; no configuration beats the base model (0.050); the highest is 0.000 (r4-qv, r8-qv)."
    )
    above = [_run("a", 10, 1, 0.2, 0.5), _run("b", 10, 2, 0.2, 0.5), _run("c", 10, 3, 0.2, 0.1)]
    got = verdicts(above, base_score=0.0)
    assert got["best_eval_score"] is None and got["ties"]["best_eval_score"] == ["a", "b"]
    lines = sweep._verdict_lines({"base_eval_score": 0.0, **got}, {r["name"]: r for r in above}, 1.0)
    assert "- **Fastest converging**: a tie between a, b, c (loss ≤ 1 at step 10)" in lines[0]
    assert lines[1] == "- **Best final loss**: a tie between a, b, c at 0.200."
    assert lines[2] == "- Eval score: no best; a, b tie at 0.500 exact match."
    assert sweep.steps_to_threshold([(5, 2.0), (10, 0.9), (15, 0.4), (20, 0.6)], 0.5) == 15


def test_launch_runs_each_training_under_the_launcher(monkeypatch):
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, check: calls.append(cmd))
    sweep.run_training(["r.yaml", "--lora_r", "4"], ["accelerate", "launch", "--num_processes", "2"])
    assert calls == [["accelerate", "launch", "--num_processes", "2", "-m", "vlm_sft.cli", "train", "r.yaml",
                      "--lora_r", "4"]]  # fmt: skip


def test_recipe_keys_on_the_command_line_are_yaml_scalars():
    args = parse_command(["sweep", "s.yaml", "--num_train_epochs", "1", "--learning_rate=1e-3", "--only", "r4-qv",
                          "--bf16", "false", "--set", "lora_target=qv", "--disable_tqdm"])[1]  # fmt: skip
    assert args.sweep == "s.yaml" and args.only == "r4-qv"
    assert overrides(args) == {
        "lora_target": "qv", "num_train_epochs": 1, "learning_rate": 1e-3, "bf16": False, "disable_tqdm": True,
    }  # fmt: skip
    with pytest.raises(ValueError, match="key=value"):
        overrides(parse_command(["sweep", "s.yaml", "--set", "num_train_epochs"])[1])
    with pytest.raises(ValueError, match="not a recipe key: --num_trian_epochs"):
        overrides(parse_command(["sweep", "s.yaml", "--num_trian_epochs", "1"])[1])


def test_sweep_command_help_and_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["sweep", "--help"])
    assert done.value.code == 0 and "--base_recipe" in capsys.readouterr().out
    assert cli_main(["sweep", str(SHIPPED), "--lora_rank", "4"]) == 2
    assert "error: not a recipe key: --lora_rank" in capsys.readouterr().err
    assert cli_main(["sweep", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def test_two_run_sweep_end_to_end(tiny_llava, digits, tmp_path, capsys):
    """Two real training runs of 8 steps, scored by generation; the three outputs say the same thing."""
    train_file = tmp_path / "train.json"
    train_file.write_text(json.dumps(json.loads(digits["train"].read_text())[:128]))
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    recipe.update(
        model_name_or_path=str(tiny_llava),
        train_file=str(train_file),
        eval_file=str(digits["eval"]),
        image_dir=str(digits["image_dir"]),
    )
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "base_recipe": str(tmp_path / "recipe.yaml"),
                "output_dir": str(tmp_path / "sweep"),
                "grid": {"lora_r": [2, 8], "lora_target": ["qv"]},
                "lora_alpha_per_r": 2,
                "overrides": {"max_steps": 8, "logging_steps": 2, "disable_tqdm": True},
                "loss_threshold": 100.0,  # every run is under it at its first log: the verdict falls to time
                "eval": {"limit": 16, "batch_size": 16, "max_new_tokens": 4},
            }
        )
    )
    assert cli_main(["sweep", str(sweep_file)]) == 0
    stdout = capsys.readouterr().out
    out = tmp_path / "sweep"
    result = json.loads((out / "sweep.json").read_text())
    runs = {r["name"]: r for r in result["runs"]}
    assert list(runs) == ["r2-qv", "r8-qv"]

    for name, run in runs.items():
        state = json.loads((out / name / "trainer_state.json").read_text())
        assert run["steps"] == state["global_step"] == 8
        assert run["loss_curve"] == [[e["step"], e["loss"]] for e in state["log_history"] if "loss" in e]
        last5 = [loss for _, loss in run["loss_curve"][-5:]]
        assert run["final_loss"] == pytest.approx(sum(last5) / len(last5)) and run["steps_to_threshold"] == 2
        adapter_config = json.loads((out / name / "adapter_config.json").read_text())
        assert adapter_config["lora_alpha"] == run["params"]["lora_alpha"] == 2 * adapter_config["r"]
        assert 0.0 <= run["eval_score"] <= 1.0 and (out / name / "loss.png").is_file()
    # LoRA on q and v of 2 layers 128 wide: 2 x 2 x (r x 128 + 128 x r) = 1024 r; everything else is the same
    assert (runs["r2-qv"]["lora_params"], runs["r8-qv"]["lora_params"]) == (1024 * 2, 1024 * 8)
    assert runs["r8-qv"]["trainable_params"] - runs["r2-qv"]["trainable_params"] == 3 * runs["r2-qv"]["lora_params"]
    assert runs["r8-qv"]["adapter_mb"] > runs["r2-qv"]["adapter_mb"]

    # Both reach the threshold at their first log: a tie, not broken by wall time.
    assert result["fastest_converging"] is None and result["ties"]["fastest_converging"] == ["r2-qv", "r8-qv"]
    assert result["best_final_loss"] == min(runs.values(), key=lambda r: r["final_loss"])["name"]
    md = (out / "sweep.md").read_text()
    assert md in stdout
    assert "**Fastest converging**: a tie between r2-qv, r8-qv (loss ≤ 100 at step 2)" in md
    best = result["best_final_loss"]
    assert f"**Best final loss: {best}**: {runs[best]['final_loss']:.3f}" in md
    for name, run in runs.items():  # the table row says what the JSON says
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == f"{run['trainable_params']:,}" and cells[5] == f"{run['lora_params']:,}"
        assert cells[8] == f"{run['final_loss']:.3f}" and cells[9] == "2 / 8"
        assert cells[10] == f"{run['eval_score']:.3f}"
    assert re.search(rf"the base model scores {result['base_eval_score']:.3f}", md)
    with Image.open(out / "sweep.png") as png:
        assert png.format == "PNG" and png.width >= 600
    drawn = plot_sweep(result["runs"], tmp_path / "redrawn.png", threshold=100.0)  # what the picture shows
    assert {k: [list(p) for p in v] for k, v in drawn.items()} == {n: r["loss_curve"] for n, r in runs.items()}


def test_final_loss_is_the_mean_of_the_last_five_logged_losses():
    curve = [(step, float(step)) for step in range(1, 9)]
    assert sweep.final_loss(curve) == pytest.approx((4 + 5 + 6 + 7 + 8) / 5)
    assert sweep.final_loss(curve[:2]) == pytest.approx(1.5) and sweep.final_loss([]) is None


def test_any_recipe_key_is_an_axis_lora_r_by_projector_lr():
    spec = SweepSpec(base_recipe=str(REPO / "recipes" / "quickstart.yaml"), grid={"lora_r": [4, 16]})
    spec.grid["projector_lr"] = [1e-4, 1e-3]
    configs = expand(spec)
    assert [c["name"] for c in configs] == ["r4-plr0.0001", "r4-plr0.001", "r16-plr0.0001", "r16-plr0.001"]
    check_configs(spec, configs)  # each point parses as a recipe, projector_lr included
    from vlm_sft.training.train import parse_recipe

    assert parse_recipe(sweep.recipe_argv(spec, configs[1]))[3].projector_lr == 1e-3
