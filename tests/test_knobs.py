"""The knob matrix: every recipe key the README, a recipe or `vlm_sft/training/config.py` documents trains a couple
of steps on the tiny LLaVA in one of a few combined runs, and its effect is checked in what the run wrote.
Refused keys are tested for their message here and in tests/test_precision.py."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from vlm_sft.training.config import VisionArguments

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path, digits) -> dict[str, Path]:
    """Six digits to train on, one of them made long (for max_length + too_long drop), and two to evaluate on."""
    rows = json.loads(Path(digits["train"]).read_text())
    train = rows[:6]
    train[0] = {**train[0], "conversations": [dict(t) for t in train[0]["conversations"]]}
    train[0]["conversations"][0]["value"] += " Look carefully at the strokes, please" * 8
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "eval.json").write_text(json.dumps(rows[6:8]))
    return {"train": tmp_path / "train.json", "eval": tmp_path / "eval.json", "images": Path(digits["image_dir"])}


def _base(tiny_llava: Path, data: dict[str, Path], out: Path) -> list[str]:
    return [
        *(str(REPO / "recipes/quickstart.yaml"), "--model_name_or_path", str(tiny_llava)),
        *("--train_file", str(data["train"]), "--image_dir", str(data["images"]), "--output_dir", str(out)),
        *("--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1"),
    ]


# Each run combines knobs; the keys are read back from these lists to check every documented key is covered.
RUNS = {
    # The QLoRA recipe's knobs (4-bit NF4, double quantization, bf16 storage and autocast, checkpointing) with
    # evaluation, accumulation, scheduler, saving, the too_long policy, last-turn loss and a system prompt.
    "qlora": [
        *("--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "true"),
        *("--bnb_4bit_quant_storage", "bfloat16", "--dtype", "bfloat16", "--bf16", "true"),
        *("--attn_implementation", "sdpa", "--activation_checkpointing", "true"),
        *("--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.05", "--lora_target", "qv"),
        *("--lora_on_vision_tower", "false", "--train_projector", "true", "--train_vision_tower", "false"),
        *("--eval_strategy", "steps", "--eval_steps", "1", "--per_device_eval_batch_size", "2"),
        *("--gradient_accumulation_steps", "2", "--learning_rate", "2.0e-4", "--lr_scheduler_type", "cosine"),
        *("--warmup_steps", "0.03", "--weight_decay", "0.0", "--save_strategy", "steps", "--save_steps", "2"),
        *("--max_length", "60", "--too_long", "drop", "--train_on", "last_assistant_turn"),
        *("--system_prompt", "You read digits.", "--data_format", "llava", "--num_train_epochs", "1"),
        *("--dataloader_num_workers", "0", "--report_to", "none", "--seed", "7", "--use_peft", "true"),
    ],
    # LoRA variants: DoRA + rsLoRA on every linear layer, the vision tower too, the projector frozen,
    # an eval split held out of train_file, batches grouped by length.
    "lora-variants": [
        *("--use_dora", "true", "--use_rslora", "true", "--lora_target", "all-linear"),
        *("--lora_on_vision_tower", "true", "--train_projector", "false", "--eval_fraction", "0.34"),
        *("--eval_strategy", "steps", "--eval_steps", "2", "--train_sampling_strategy", "group_by_length"),
    ],
    # Names in lora_target_modules (scoped to the language model), the vision tower trained fully, 8-bit.
    "targets": [
        *("--lora_target_modules", "q_proj", "v_proj", "--train_vision_tower", "true"),
        *("--load_in_8bit", "true", "--dtype", "float32", "--bf16", "false"),
    ],
    # Learning rates per part (LoRA+ on the language model, a slower LoRA'd vision tower) and the text limit.
    "part-rates": [
        *("--loraplus_lr_ratio", "4", "--lora_on_vision_tower", "true", "--vision_tower_lr", "1e-5"),
        *("--max_text_chars", "5000"),
    ],
}
# Documented keys checked by another test that runs them.
ELSEWHERE = {
    "resume_from_checkpoint": "test_resume.py",
    "overwrite_output_dir": "test_checkpoints.py",
    "hub_base_model_id": "test_model_card.py",
    "eval_file": "test_quickstart.py",
    # Resolution keys: every family recipe that sets them trains on its tiny model there.
    "image_min_pixels": "test_family_recipes.py",
    "image_max_pixels": "test_family_recipes.py",
    "image_longest_edge": "test_family_recipes.py",
    "image_splitting": "test_family_recipes.py",
    "max_image_tokens": "test_family_recipes.py",
    # Scored selection trains with these (kept step, early stop, a projector rate).
    "early_stopping_patience": "test_scored_selection.py",
    "projector_lr": "test_scored_selection.py",
}


def _keys(args: list[str]) -> set[str]:
    return {a[2:] for a in args if a.startswith("--")}


def test_every_documented_key_is_exercised():
    documented = {f.name for f in fields(VisionArguments)}  # the README points at these (training/config.py)
    for recipe in ("quickstart.yaml", "llava_qlora.yaml"):
        documented |= set(yaml.safe_load((REPO / "recipes" / recipe).read_text()))
    exercised = set(yaml.safe_load((REPO / "recipes/quickstart.yaml").read_text()))  # every run's base
    exercised |= {"model_name_or_path", "train_file", "image_dir", "output_dir", "max_steps", "logging_steps"}
    for args in RUNS.values():
        exercised |= _keys(args)
    for key, test_file in ELSEWHERE.items():
        assert key in (REPO / "tests" / test_file).read_text(), f"{test_file} does not exercise {key}"
    missing = documented - exercised - set(ELSEWHERE)
    assert not missing, f"documented recipe keys no test trains with: {sorted(missing)}"


def _adapter_keys(out: Path) -> set[str]:
    return set(load_file(out / "adapter_model.safetensors"))


def _log(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


@pytest.mark.slow
def test_qlora_knobs_train(tmp_path, tiny_llava, data, capsys):
    from vlm_sft.training.train import main

    out = tmp_path / "out"
    assert main([*_base(tiny_llava, data, out), "--eval_file", str(data["eval"]), *RUNS["qlora"]]) == 0
    log = _log(out)
    assert any("eval_loss" in h for h in log) and sum("loss" in h for h in log) == 2
    keys = _adapter_keys(out)
    assert {k.rsplit(".", 3)[-3] for k in keys if "lora_A" in k} == {"q_proj", "v_proj"}
    assert any("multi_modal_projector" in k for k in keys) and not any("vision_tower" in k for k in keys)
    assert (out / "checkpoint-2").is_dir(), "save_strategy steps"
    card = (out / "README.md").read_text()
    assert "Training precision: 4-bit base, dtype bfloat16, bf16 autocast, 4-bit storage bfloat16." in card
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.05)


@pytest.mark.slow
def test_lora_variant_knobs_train(tmp_path, tiny_llava, data):
    from vlm_sft.training.train import main

    out = tmp_path / "out"
    assert main([*_base(tiny_llava, data, out), "--eval_file", "", *RUNS["lora-variants"]]) == 0
    assert any("eval_loss" in h for h in _log(out)), "eval_fraction held out an eval split"
    keys = _adapter_keys(out)
    assert any("lora_magnitude_vector" in k for k in keys), "DoRA"
    assert any("vision_tower" in k and "lora_A" in k for k in keys), "lora_on_vision_tower"
    assert any("language_model" in k and "gate_proj.lora_A" in k for k in keys), "all-linear"
    assert not any("multi_modal_projector" in k for k in keys), "train_projector false"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["use_rslora"] is True


@pytest.mark.slow
def test_target_name_and_tower_knobs_train(tmp_path, tiny_llava, data):
    from vlm_sft.training.train import main

    out = tmp_path / "out"
    args = [*_base(tiny_llava, data, out), "--eval_file", "", "--max_length", "60", "--too_long", "drop"]
    assert main([*args, *RUNS["targets"]]) == 0
    keys = _adapter_keys(out)
    lora = {k for k in keys if "lora_A" in k}
    assert lora and all("language_model" in k for k in lora), "names stay inside the language model"
    assert {k.rsplit(".", 3)[-3] for k in lora} == {"q_proj", "v_proj"}
    assert any("vision_tower" in k and "lora" not in k for k in keys), "train_vision_tower saves the tower"


def test_refused_knobs_name_what_to_change(tmp_path, tiny_llava, data, capsys):
    from vlm_sft.training.train import main

    base = [*_base(tiny_llava, data, tmp_path / "out"), "--eval_file", ""]
    cases = [
        (["--lora_target_modules", "qproj"], "matches no linear layer", 2),
        (["--use_peft", "false"], "use_peft is false", 2),
        (["--packing", "true"], "packing=True is not supported", 2),
        (["--lora_target", "everything"], "lora_target='everything' is not one of", 2),
        (["--too_long", "cut"], "too_long='cut' is not one of", 2),
        (["--max_length", "20", "--too_long", "error"], "longer than max_length=20", 1),
    ]
    for extra, words, code in cases:
        assert main([*base, *extra]) == code, extra
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and words in errors[0] and "Traceback" not in err, (extra, err[-2000:])


@pytest.mark.slow
def test_part_learning_rate_knobs_train(tmp_path, tiny_llava, data):
    from vlm_sft.training.train import main

    out = tmp_path / "out"
    assert main([*_base(tiny_llava, data, out), "--eval_file", "", *RUNS["part-rates"]]) == 0
    assert sum("loss" in h for h in _log(out)) == 2
    keys = _adapter_keys(out)
    assert any("vision_tower" in k and "lora_B" in k for k in keys), "the vision tower's LoRA trains at its own rate"
    assert any("language_model" in k and "lora_B" in k for k in keys)
