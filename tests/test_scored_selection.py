"""Scored evaluation during training (eval_generate), the best step kept by that score, early stopping, and
learning rates per part: refusals, the pieces, and real short training runs on the tiny LLaVA."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from vlm_sft.evaluation.metrics import flat_metrics, score
from vlm_sft.evaluation.plots import plot_loss, score_curves
from vlm_sft.training.scoring import kept_step, scored_subset

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def _parse(*overrides: str):
    from vlm_sft.training.train import parse_recipe

    return parse_recipe([str(QUICKSTART), *overrides])


def test_scored_subset_is_seeded_sorted_and_fixed():
    first = scored_subset(297, 100, seed=42)
    assert first == scored_subset(297, 100, seed=42) and first == sorted(first) and len(set(first)) == 100
    assert first != scored_subset(297, 100, seed=43)
    assert scored_subset(10, 100, seed=0) == list(range(10)) == scored_subset(10, None, seed=0)


def test_flat_metrics_name_every_headline_score_with_the_prefix():
    summary, _ = score(["4", '{"a": 1}', "a cat"], ["4", '{"a": 2}', "a dog"])
    flat = flat_metrics(summary)
    assert flat["eval_exact_match"] == pytest.approx(1 / 3)
    assert flat["eval_json_valid"] == 1.0 and flat["eval_json_field_accuracy"] == 0.0
    assert flat["eval_numeric_accuracy"] == 1.0 and flat["eval_numeric_mae"] == 0.0
    assert set(flat_metrics(score(["x"], ["y"])[0], "test")) == {"test_exact_match", "test_token_f1"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--eval_strategy", "epoch", "--eval_generate", "false"], "set eval_generate: true"),
        (["--early_stopping_patience", "2"], "early_stopping_patience needs evaluations"),
        (["--vision_tower_lr", "1e-5"], "the vision tower is not trained"),
        (["--projector_lr", "0"], "projector_lr must be a positive number"),
        (["--eval_generate_limit", "0"], "eval_generate_limit must be a positive"),
    ],
)
def test_recipes_that_would_fail_late_are_refused_with_a_one_line_error(overrides, message, capsys):
    from vlm_sft.training.train import main

    assert main([str(QUICKSTART), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_eval_generate_is_refused_where_weights_are_sharded():
    from vlm_sft.training.distributed import Engine, EngineError
    from vlm_sft.training.train import check_scored_engine

    _, training_args, _, vision = _parse("--eval_strategy", "epoch")
    for engine in (Engine("fsdp", 2), Engine("deepspeed", 2, zero_stage=3)):
        with pytest.raises(EngineError, match=f"not supported under {engine.describe()}"):
            check_scored_engine(training_args, vision, engine)
    check_scored_engine(training_args, vision, Engine("deepspeed", 2, zero_stage=2))  # full replicas: fine
    check_scored_engine(training_args, vision, Engine("ddp", 2))
    vision.eval_generate = False
    check_scored_engine(training_args, vision, Engine("fsdp", 2))


def test_an_error_metric_is_lower_is_better():
    args = _parse("--eval_strategy", "epoch", "--eval_generate", "true", "--metric_for_best_model", "eval_numeric_mae")
    assert args[1].greater_is_better is False
    args = _parse("--eval_strategy", "epoch", "--eval_generate", "true")
    assert args[1].greater_is_better is True and args[1].metric_for_best_model == "eval_exact_match"


def test_kept_step_says_which_step_and_why():
    log = [{"eval_exact_match": v, "step": s} for s, v in ((10, 0.2), (20, 0.6), (30, 0.5))]
    state = SimpleNamespace(
        global_step=30, max_steps=50, best_metric=0.6, best_global_step=20,
        best_model_checkpoint="out/checkpoint-20", log_history=log,
    )  # fmt: skip
    args = SimpleNamespace(load_best_model_at_end=True, metric_for_best_model="exact_match", greater_is_better=True)
    kept = kept_step(state, args, early_stopping_patience=1)
    assert kept["step"] == 20 and kept["metric"] == "eval_exact_match" and kept["early_stopped"]
    assert kept["reason"] == "highest eval_exact_match (0.6) of 3 evaluations; stopped early at step 30"
    args.load_best_model_at_end = False
    assert kept_step(state, args)["step"] == 30 and kept_step(state, args)["reason"] == (
        "the last step (no load_best_model_at_end)"
    )
    assert kept_step(state, args, early_stopping_patience=2)["reason"].endswith("; stopped early at step 30")


def test_loss_png_gets_a_panel_of_the_scores():
    log = [{"loss": 2.0, "step": 5}, {"eval_loss": 1.5, "eval_exact_match": 0.25, "eval_token_f1": 0.3, "step": 5}]
    log += [
        {"loss": 1.0, "step": 10},
        {"eval_loss": 1.2, "eval_exact_match": 0.75, "eval_numeric_mae": 2.0, "step": 10},
    ]
    assert score_curves(log) == {"eval_exact_match": [(5, 0.25), (10, 0.75)], "eval_token_f1": [(5, 0.3)]}
    assert score_curves([{"loss": 1.0, "step": 1}]) == {}


def test_part_learning_rates_group_projector_vision_and_lora_b(tiny_llava):
    from trl import ModelConfig

    from vlm_sft.modeling.setup import apply_lora, load_model
    from vlm_sft.training.config import VisionArguments
    from vlm_sft.training.optimizer import PartLearningRates

    model_args = ModelConfig(model_name_or_path=str(tiny_llava), dtype="float32", use_peft=True, lora_r=4)
    vision = VisionArguments(lora_target="qv", lora_on_vision_tower=True)
    model, parts = load_model(model_args)
    model = apply_lora(model, parts, model_args, vision)
    rates = PartLearningRates(parts, 1e-3, projector_lr=1e-4, vision_tower_lr=1e-5, loraplus_lr_ratio=16)
    by_part: dict[str, set] = {}
    for group in rates.groups(model, decay=set()):
        by_part.setdefault(group["part"], set()).add(group["lr"])
    assert by_part == {"projector": {1e-4}, "vision_tower": {1e-5}, "lora_B": {1.6e-2}, "rest": {1e-3}}
    grouped = sum(p.numel() for g in rates.groups(model, set()) for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # LoRA+ alone: PEFT's optimizer, B matrices at 16x
    only_plus = PartLearningRates(parts, 1e-3, loraplus_lr_ratio=16)
    optimizer = only_plus.build(model, torch.optim.AdamW, {"lr": 1e-3}, set())
    assert sorted({g["lr"] for g in optimizer.param_groups if g["params"]}) == [1e-3, 1.6e-2]


# ---------------------------------------------------------------------------------------------- real runs


def _recipe(tmp_path: Path, tiny_llava, digits, n_train: int = 64, n_eval: int = 24) -> Path:
    train_file, eval_file = tmp_path / "train.json", tmp_path / "eval.json"
    train_file.write_text(json.dumps(json.loads(digits["train"].read_text())[:n_train]))
    eval_file.write_text(json.dumps(json.loads(digits["eval"].read_text())[:n_eval]))
    recipe = yaml.safe_load(QUICKSTART.read_text())
    recipe.update(
        model_name_or_path=str(tiny_llava),
        train_file=str(train_file),
        eval_file=str(eval_file),
        image_dir=str(digits["image_dir"]),
        output_dir=str(tmp_path / "out"),
        disable_tqdm=True,
        logging_steps=2,
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_scored_evaluation_every_epoch_keeps_the_best_step(tiny_llava, digits, tmp_path, capsys):
    """The issue's command on a small quickstart: eval_exact_match per epoch, the best step kept and recorded."""
    from vlm_sft.training.train import main

    recipe = _recipe(tmp_path, tiny_llava, digits)
    argv = [str(recipe), "--num_train_epochs", "3", "--eval_strategy", "epoch", "--eval_generate", "true"]
    argv += ["--eval_generate_limit", "16", "--metric_for_best_model", "eval_exact_match"]
    argv += ["--load_best_model_at_end", "true", "--projector_lr", "1e-3"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_exact_match" in e]
    assert [e["epoch"] for e in evals] == [1.0, 2.0, 3.0]
    assert all(0.0 <= e["eval_exact_match"] <= 1.0 and "eval_loss" in e and "eval_token_f1" in e for e in evals)
    assert all(e["eval_numeric_accuracy"] == e["eval_exact_match"] for e in evals)  # digits: references are numbers
    assert stdout.count("scored 16 eval answers by generation in ") == 3
    best = max(evals, key=lambda e: e["eval_exact_match"])  # the first of equals, as the Trainer keeps it
    assert state["best_metric"] == best["eval_exact_match"]
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    kept = json.loads((out / "training_summary.json").read_text())["kept"]
    assert kept["step"] == best["step"] and kept["metric"] == "eval_exact_match" and kept["evaluations"] == 3
    assert (
        f"This adapter is the one from step {best['step']}: highest eval_exact_match"
        in (out / "README.md").read_text()
    )
    assert f"kept: step {best['step']}" in stdout
    drawn = plot_loss(state["log_history"], tmp_path / "loss.png")
    assert drawn["eval_exact_match"] == [(e["step"], e["eval_exact_match"]) for e in evals]


def test_early_stopping_stops_a_run_that_stopped_improving(tiny_llava, digits, tmp_path, capsys):
    """At a learning rate too small to change any answer, the score never improves after the first evaluation."""
    from vlm_sft.training.train import main

    recipe = _recipe(tmp_path, tiny_llava, digits, n_train=32, n_eval=8)
    argv = [str(recipe), "--num_train_epochs", "6", "--eval_strategy", "epoch", "--eval_generate", "true"]
    argv += ["--learning_rate", "1e-12", "--load_best_model_at_end", "true", "--early_stopping_patience", "1"]
    assert main(argv) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_exact_match" in e]
    assert len(evals) == 2 and state["global_step"] == 2 * 2  # 32 examples / 16 per step = 2 steps per epoch
    kept = json.loads((tmp_path / "out" / "training_summary.json").read_text())["kept"]
    assert kept["early_stopped"] and kept["step"] == 2 and "stopped early at step 4" in kept["reason"]


@pytest.mark.slow
def test_two_processes_answer_their_shards_and_log_the_single_process_score(tiny_llava, digits, tmp_path):
    """Two CPU ranks each answer part of 7 scored examples; the gathered score is the one a single process gets
    from the same adapter on the same subset."""
    import subprocess
    import sys

    from test_distributed import free_port, subprocess_env

    from vlm_sft.evaluation.generate import AdapterSpec, eval_set_from_dataset, evaluate_models
    from vlm_sft.training.recipe import eval_split, load_recipe

    recipe = _recipe(tmp_path, tiny_llava, digits, n_train=32, n_eval=20)
    bin_dir = Path(sys.executable).parent
    command = [bin_dir / "accelerate", "launch", "--config_file", REPO / "recipes/accelerate_configs/cpu_ddp.yaml"]
    command += ["--main_process_port", str(free_port()), REPO / "scripts/sft_vlm.py", recipe]
    command += ["--max_steps", "3", "--eval_strategy", "steps", "--eval_steps", "3", "--eval_generate", "true"]
    command += ["--eval_generate_limit", "7", "--per_device_train_batch_size", "4"]
    done = subprocess.run(
        [str(c) for c in command], cwd=REPO, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert done.stdout.count("scored 7 eval answers by generation") == 1  # printed once, by the main process
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    logged = next(e for e in state["log_history"] if "eval_exact_match" in e)

    parsed = load_recipe(recipe)
    subset = eval_split(parsed).select(scored_subset(20, 7, seed=parsed[1].seed))
    report = evaluate_models(
        eval_set_from_dataset(subset, "subset"),
        [AdapterSpec(str(tmp_path / "out"), name="run")],
        include_base=False,
        max_new_tokens=4,
        progress=False,
    )
    metrics = report["models"][0]["metrics"]
    assert logged["eval_exact_match"] == pytest.approx(metrics["exact_match"])
    assert logged["eval_token_f1"] == pytest.approx(metrics["token_f1"])


@pytest.mark.slow
def test_scored_evaluation_with_qlora_and_activation_checkpointing(tiny_llava, digits, tmp_path, capsys):
    """Generation during evaluation on a 4-bit base with activation checkpointing on (bitsandbytes on CPU)."""
    pytest.importorskip("bitsandbytes")  # an optional dependency: QLoRA needs it wherever it runs
    from vlm_sft.training.train import main

    recipe = _recipe(tmp_path, tiny_llava, digits, n_train=32, n_eval=8)
    argv = [str(recipe), "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2"]
    argv += ["--eval_generate", "true", "--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"]
    argv += ["--dtype", "bfloat16", "--bf16", "true"]
    argv += ["--activation_checkpointing", "true"]
    assert main(argv) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_exact_match" in e] == [2]
    assert "scored 8 eval answers by generation" in capsys.readouterr().out
