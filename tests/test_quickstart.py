"""End to end: the README's quickstart, through the real commands (prepare, accelerate launch, report)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
LINE = re.compile(r"^quickstart: base_accuracy=(\d\.\d\d) finetuned_accuracy=(\d\.\d\d) train_seconds=(\d+)$")


def _run(*cmd: str | Path, cwd: Path = REPO) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_reduced_quickstart_pipeline(tmp_path: Path):
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    recipe.update(
        model_name_or_path=str(tmp_path / "tiny-llava"),
        train_file=str(tmp_path / "digits" / "train.json"),
        eval_file=str(tmp_path / "digits" / "eval.json"),
        image_dir=str(tmp_path / "digits" / "images"),
        output_dir=str(tmp_path / "out"),
    )
    small = tmp_path / "quickstart_small.yaml"
    small.write_text(yaml.safe_dump(recipe))

    _run(BIN / "vlm-sft", "quickstart", "prepare", "--recipe", small)
    launch = [BIN / "accelerate", "launch", "--num_processes", "1", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    stdout = _run(*launch, REPO / "scripts" / "sft_vlm.py", small, "--num_train_epochs", "1", "--max_steps", "40")
    assert re.search(r"adapter: \d+\.\d\d MB", stdout) and "vision_tower" in stdout

    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "chat_template.jinja", "processor_config.json",
                 "tokenizer.json", "trainer_state.json", "trainable_parameters.json"):  # fmt: skip
        assert (out / name).is_file(), name
    report = json.loads((out / "trainable_parameters.json").read_text())
    assert report["components"]["vision_tower"]["trainable"] == 0
    assert report["components"]["projector"]["percent"] == 100.0
    weights = load_file(out / "adapter_model.safetensors")
    assert any("multi_modal_projector" in k for k in weights) and any("lora_B" in k for k in weights)
    assert not any("vision_tower" in k for k in weights), "no vision-tower weights in the adapter"
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k), "LoRA B left the zero init"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 40 and any("loss" in e for e in state["log_history"])

    line = _run(BIN / "vlm-sft", "quickstart", "report", "--recipe", small, "--limit", "64").strip().splitlines()[-1]
    assert LINE.match(line), line


@pytest.mark.slow
def test_make_quickstart_meets_its_targets():
    """The README's first command, in full: fine-tuned >= 0.85, base <= 0.20, training <= 180 s."""
    # Under `make test`, a nested make prints "Leaving directory" last unless told not to.
    stdout = _run("make", "--no-print-directory", "quickstart")
    line = stdout.strip().splitlines()[-1]
    match = LINE.match(line)
    assert match, line
    base, tuned, seconds = float(match[1]), float(match[2]), int(match[3])
    assert tuned >= 0.85 and base <= 0.20, line
    assert seconds <= 180 * 2, line  # the target is 180 s on an idle machine; CI machines are shared
    # The README's figures come from such a run (docs/quickstart_result.json); another machine stays within
    # the variation the README states.
    kept = LINE.match(json.loads((REPO / "docs" / "quickstart_result.json").read_text())["line"])
    assert abs(tuned - float(kept[2])) <= 0.02 and abs(base - float(kept[1])) <= 0.02, (line, kept[0])


def test_resume_true_on_a_finished_run_without_checkpoints_is_refused(tmp_path, tiny_llava, digits):
    """`--resume_from_checkpoint true` with nothing to resume must not retrain over a finished run."""
    from vlm_sft.training.train import main

    out = tmp_path / "finished"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"weights of a finished run")
    (out / "trainer_state.json").write_text("{}")
    code = main(
        [
            str(REPO / "recipes" / "quickstart.yaml"),
            *("--model_name_or_path", str(tiny_llava), "--output_dir", str(out)),
            *("--train_file", str(digits["train"]), "--eval_file", str(digits["eval"])),
            *("--image_dir", str(digits["image_dir"]), "--overwrite_output_dir", "false"),
            *("--resume_from_checkpoint", "true"),
        ]
    )
    assert code == 1
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights of a finished run"
