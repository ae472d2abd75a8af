"""Which checkpoint a resume takes (never an interrupted one), and an output_dir that is not silently overwritten."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerState

from vlm_sft.training.checkpoints import (
    MANIFEST,
    CheckpointError,
    OutputDirError,
    checkpoint_problems,
    last_complete_checkpoint,
    remove_incomplete_after,
    resolve_resume,
    write_manifest,
)
from vlm_sft.training.output_dir import MARKER as MARKER_FILE

REPO = Path(__file__).resolve().parents[1]


def make_checkpoint(output_dir: Path, step: int, manifest: bool = True, world_size: int = 1) -> Path:
    """A checkpoint with the files the Trainer writes for a LoRA run, finished (manifest) or not."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.ones(4, 8), "lora_B": torch.zeros(8, 4)}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text("{}")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({}, folder / "scheduler.pt")
    for rank in range(world_size):
        torch.save({"cpu": torch.random.get_rng_state()}, folder / f"rng_state_{rank}.pth")
    TrainerState(global_step=step).save_to_json(str(folder / "trainer_state.json"))
    if manifest:
        write_manifest(folder, step, world_size)
    return folder


# ---------------------------------------------------------------- completeness
def test_finished_checkpoint_is_complete(tmp_path: Path):
    folder = make_checkpoint(tmp_path, 4)
    assert checkpoint_problems(folder) == []
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert {"optimizer.pt", "trainer_state.json", "adapter_model.safetensors", "rng_state_0.pth"} <= set(files)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda f: (f / "optimizer.pt").unlink(), "missing optimizer.pt"),
        (lambda f: (f / "rng_state_1.pth").unlink(), "missing rng_state_1.pth"),  # another rank's file
        (lambda f: (f / "optimizer.pt").write_bytes(b"cut"), "optimizer.pt has 3 bytes"),
        (lambda f: (f / MANIFEST).unlink(), f"no {MANIFEST}"),
        (lambda f: (f / "trainer_state.json").write_text('{"global_step": 4, "log_hi'), "not valid JSON"),
    ],
)
def test_damaged_or_unfinished_checkpoint_is_not_complete(tmp_path: Path, damage, problem: str):
    folder = make_checkpoint(tmp_path, 4, world_size=2)
    damage(folder)
    assert any(problem in p for p in checkpoint_problems(folder)), checkpoint_problems(folder)


def test_last_complete_skips_a_newer_interrupted_one(tmp_path: Path):
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 4)
    interrupted = make_checkpoint(tmp_path, 6, manifest=False)  # killed before every rank had written
    (interrupted / "trainer_state.json").unlink()
    found, skipped = last_complete_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint-4" and set(skipped) == {interrupted}
    # Numeric order, not string order: checkpoint-10 is after checkpoint-4.
    make_checkpoint(tmp_path, 10)
    assert last_complete_checkpoint(tmp_path)[0] == tmp_path / "checkpoint-10"


def test_checkpoints_of_other_tools_are_judged_by_structure(tmp_path: Path):
    """No manifest anywhere (plain transformers / TRL run): complete when trainer_state and weights are whole."""
    good = make_checkpoint(tmp_path, 3, manifest=False)
    assert checkpoint_problems(good, require_manifest=False) == []
    assert last_complete_checkpoint(tmp_path)[0] == good
    truncated = make_checkpoint(tmp_path, 6, manifest=False)
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[:-10])
    assert checkpoint_problems(truncated, require_manifest=False) == ["adapter_model.safetensors is truncated"]
    pickled = make_checkpoint(tmp_path, 9, manifest=False)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    assert "pickled" in checkpoint_problems(pickled, require_manifest=False)[0]
    wrong_step = make_checkpoint(tmp_path, 12, manifest=False)
    TrainerState(global_step=11).save_to_json(str(wrong_step / "trainer_state.json"))
    assert "says step 11" in checkpoint_problems(wrong_step, require_manifest=False)[0]
    assert last_complete_checkpoint(tmp_path)[0] == good


# ---------------------------------------------------------------- resume
def test_resolve_resume(tmp_path: Path, caplog):
    assert resolve_resume(None, tmp_path) is None and resolve_resume("false", tmp_path) is None
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("true", tmp_path) is None  # nothing yet: start from step 0, and say so
    assert "No complete checkpoint" in caplog.text
    make_checkpoint(tmp_path, 2)
    interrupted = make_checkpoint(tmp_path, 4, manifest=False)
    assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-2")
    assert resolve_resume(True, tmp_path) == str(tmp_path / "checkpoint-2")
    assert resolve_resume(str(tmp_path / "checkpoint-2"), tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(CheckpointError, match="Cannot resume from .*checkpoint-4: no vlm_sft_checkpoint.json"):
        resolve_resume(str(interrupted), tmp_path)
    with pytest.raises(CheckpointError, match="is not a folder"):
        resolve_resume(str(tmp_path / "checkpoint-99"), tmp_path)


def test_incomplete_checkpoints_after_the_resume_point_are_removed(tmp_path: Path):
    make_checkpoint(tmp_path, 2)
    keep = make_checkpoint(tmp_path, 4)
    stale = make_checkpoint(tmp_path, 6, manifest=False)
    assert remove_incomplete_after(tmp_path, str(keep)) == [stale]
    assert not stale.exists() and keep.exists() and (tmp_path / "checkpoint-2").exists()


# ---------------------------------------------------------------- output_dir
def test_output_dir_with_another_runs_results_is_refused(tmp_path: Path):
    from vlm_sft.training.output_dir import OutputDir

    assert OutputDir(tmp_path / "new").check(overwrite=False, resuming=False) == []
    make_checkpoint(tmp_path, 5)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / MARKER_FILE).write_text(json.dumps({"files": ["adapter_model.safetensors"]}))
    with pytest.raises(OutputDirError) as refused:
        OutputDir(tmp_path).check(overwrite=False, resuming=False)
    message = str(refused.value)
    assert str(tmp_path) in message and "--overwrite_output_dir true" in message and "checkpoint-5" in message
    assert OutputDir(tmp_path).check(overwrite=False, resuming=True) == []  # continuing that run
    found = OutputDir(tmp_path).check(overwrite=True, resuming=False)
    assert sorted(p.name for p in found) == ["adapter_model.safetensors", "checkpoint-5"]


def _tiny_run_args(tmp_path: Path, tiny_llava: Path, digits: dict[str, Path], out: Path) -> list[str]:
    train = tmp_path / "train.json"
    train.write_text(json.dumps(json.loads(Path(digits["train"]).read_text())[:8]))
    args = [str(REPO / "recipes/quickstart.yaml"), "--model_name_or_path", str(tiny_llava), "--eval_file", ""]
    return args + ["--train_file", str(train), "--image_dir", str(digits["image_dir"]), "--output_dir", str(out)]


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_training_refuses_before_writing_and_after_validating_data(tmp_path, tiny_llava, digits, capsys, monkeypatch):
    import vlm_sft.training.train as train_module

    def no_model(*args, **kwargs):
        raise AssertionError("the refusal must come before the model is loaded")

    monkeypatch.setattr(train_module, "load_model", no_model)
    monkeypatch.setenv("VLM_SFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "previous_run"
    make_checkpoint(out, 10)
    (out / "adapter_model.safetensors").write_bytes(b"previous adapter")
    (out / MARKER_FILE).write_text(json.dumps({"files": ["adapter_model.safetensors"]}))  # a vlm-sft run's
    before = _snapshot(out)
    args = _tiny_run_args(tmp_path, tiny_llava, digits, out)

    assert train_module.main([*args, "--overwrite_output_dir", "false"]) == 1
    err = capsys.readouterr().err
    assert f"output_dir {str(out)!r} already holds another run's results" in err
    assert "--overwrite_output_dir true" in err and "--resume_from_checkpoint true" in err
    assert _snapshot(out) == before, "nothing in output_dir may change"

    # Bad data is reported first: the user fixes the data, then meets the output_dir question.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]}]))
    assert train_module.main([*args, "--overwrite_output_dir", "false", "--train_file", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "non-empty assistant reply" in err and "already holds" not in err

    # An explicit checkpoint that was cut off is refused by name.
    interrupted = make_checkpoint(out, 20, manifest=False)
    (interrupted / "trainer_state.json").unlink()
    assert train_module.main([*args, "--resume_from_checkpoint", str(interrupted)]) == 1
    assert "Cannot resume from" in capsys.readouterr().err


def test_recipes_keep_remote_code_off():
    from vlm_sft.training.train import parse_recipe

    for recipe in ("quickstart.yaml", "llava_qlora.yaml"):
        _, args, _, _ = parse_recipe([str(REPO / "recipes" / recipe), "--use_cpu", "true"])
        assert args.trust_remote_code is False, recipe


def test_model_loads_safetensors_only_and_no_remote_code(tiny_llava: Path, monkeypatch):
    """The base model load asks transformers for safetensors only (a pickled checkpoint is never unpickled)."""
    from transformers import AutoModelForImageTextToText
    from trl import ModelConfig

    import vlm_sft.modeling.setup as model_module

    seen = {}
    real = AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module.AutoModelForImageTextToText, "from_pretrained", spy)
    model_module.load_model(ModelConfig(model_name_or_path=str(tiny_llava), dtype="float32"))
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False
