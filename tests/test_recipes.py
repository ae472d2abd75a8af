"""Every recipe parses with the pinned libraries, unknown keys are rejected, CLI keys override YAML keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vlm_sft.training.train import parse_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Training recipes: every YAML under recipes/ except Accelerate's launcher configs and sweep grids.
TRAINING_RECIPES = sorted(
    p for p in RECIPES.rglob("*.yaml") if not {"accelerate_configs", "sweeps"} & set(p.relative_to(RECIPES).parts)
)


def _parse(recipe: Path, *overrides: str):
    """Parse as the trainer would; on a machine without a GPU, GPU recipes (bf16) get --use_cpu so
    TrainingArguments' hardware check passes and every key is still validated."""
    import torch

    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    return parse_recipe([str(recipe), *overrides, *cpu])


def test_recipes_are_found():
    names = {p.name for p in TRAINING_RECIPES}
    assert {"quickstart.yaml", "llava_qlora.yaml"} <= names


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses_with_unknown_keys_rejected(recipe: Path):
    script_args, training_args, model_args, vision = _parse(recipe)
    values = yaml.safe_load(recipe.read_text())
    assert model_args.model_name_or_path == values["model_name_or_path"]
    assert training_args.output_dir == values["output_dir"]
    header = recipe.read_text().splitlines()[:25]
    assert header[0].startswith("#"), "a recipe opens with its header comment"
    assert any("accelerate launch" in line for line in header), "the header shows the launch command"
    arithmetic = re.compile(r"\d+ per device x \d+ accumulation x .* = .* per (optimizer )?step")
    assert any(arithmetic.search(line) for line in header), "the header shows the batch arithmetic"


def test_llava_qlora_is_the_lessons_configuration():
    _, args, model, vision = _parse(RECIPES / "llava_qlora.yaml")
    assert model.load_in_4bit and model.bnb_4bit_quant_type == "nf4" and model.use_bnb_nested_quant
    assert model.dtype == "bfloat16" and args.bf16
    assert (model.lora_r, model.lora_alpha, model.lora_dropout) == (16, 32, 0.05)
    assert vision.lora_target == "attention" and not vision.lora_on_vision_tower and vision.train_projector
    assert args.num_train_epochs == 3 and args.per_device_train_batch_size * args.gradient_accumulation_steps == 16
    assert args.learning_rate == 2e-4 and args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.03
    assert args.eval_strategy == "epoch" and args.save_strategy == "epoch" and args.max_length is None
    assert args.report_to == [] or args.report_to == "none" or args.report_to == ["none"]


def test_cli_overrides_yaml_and_config_flag_form_works():
    recipe = str(RECIPES / "quickstart.yaml")
    _, args, model, vision = parse_recipe([recipe, "--learning_rate", "0.01", "--lora_target", "qv"])
    assert args.learning_rate == 0.01 and vision.lora_target == "qv"
    _, args2, _, _ = parse_recipe(["--config", recipe, "--num_train_epochs", "2"])
    assert args2.num_train_epochs == 2


def test_unknown_yaml_key_is_an_error_that_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "quickstart.yaml").read_text() + "\nwarmup_ratio: 0.03\n")
    with pytest.raises(ValueError, match="warmup_ratio"):
        parse_recipe([str(bad)])


def test_unknown_cli_key_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="evaluation_strategy"):
        parse_recipe([str(RECIPES / "quickstart.yaml"), "--evaluation_strategy", "epoch"])


def test_bad_policy_value_shows_the_expected_form():
    with pytest.raises(ValueError, match="lora_target='qkv' is not one of qv, attention, all-linear"):
        parse_recipe([str(RECIPES / "quickstart.yaml"), "--lora_target", "qkv"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--use_peft", "false"], "use_peft is false"),
        (["--packing", "true"], "packing=True is not supported"),
        (["--assistant_only_loss", "true"], "assistant_only_loss=True is not supported"),
        (["--dataset_streaming", "true"], "dataset_streaming=True is not supported"),
        (["--dataset_train_split", "validation"], "dataset_train_split='validation' is not supported"),
    ],
)
def test_values_the_pipeline_would_ignore_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        parse_recipe([str(RECIPES / "quickstart.yaml"), *override])


def test_a_recipe_without_use_peft_is_refused_not_trained_with_default_lora(tmp_path):
    recipe = tmp_path / "no_peft.yaml"
    recipe.write_text((RECIPES / "quickstart.yaml").read_text().replace("use_peft: true\n", ""))
    with pytest.raises(ValueError, match="use_peft: true"):
        parse_recipe([str(recipe)])


def test_the_training_entry_point_reports_a_bad_recipe_without_a_traceback(capsys, tmp_path):
    from vlm_sft.training.train import main

    assert main([str(RECIPES / "quickstart.yaml"), "--warmup_ratio", "0.1"]) == 2
    assert "error: " in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_a_parsed_recipe_names_its_parts():
    recipe = _parse(RECIPES / "quickstart.yaml", "--lora_r", "4", "--learning_rate", "0.01")
    assert recipe._fields == ("script_args", "training_args", "model_args", "vision")
    assert recipe.model_args.lora_r == 4 and recipe.training_args.learning_rate == 0.01
    assert recipe.vision is recipe[3] and recipe.vision.train_file.endswith("train.json")
