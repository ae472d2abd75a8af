"""Kill -9 a run while it writes a checkpoint, resume with `--resume_from_checkpoint true`, and end exactly where an
uninterrupted run with the same seed ends: same adapter, same number of optimizer steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from vlm_sft.training.checkpoints import checkpoint_problems, last_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import read_probe, subprocess_env  # noqa: E402

# 48 digits, 8 per step: 6 steps per epoch. 16 steps cross two epoch boundaries; checkpoints every 4 steps.
# The run is killed inside the write of checkpoint-8, so the resume starts mid-epoch from checkpoint-4.
STEPS, SAVE_EVERY, KILL_IN = 16, 4, 8


def _command(script: str, recipe_args: list[str], out: Path) -> list[str]:
    recipe = str(REPO / "recipes/quickstart.yaml")
    return [sys.executable, str(REPO / script), recipe, *recipe_args, "--output_dir", str(out)]


def _optimizer_steps(checkpoint: Path) -> set[int]:
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    return {int(s["step"]) for s in state.values()}


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_llava: Path, digits: dict[str, Path]):
    train = tmp_path / "train.json"
    train.write_text(json.dumps(json.loads(Path(digits["train"]).read_text())[:48]))
    recipe_args = ["--model_name_or_path", str(tiny_llava), "--train_file", str(train), "--eval_file", ""]
    recipe_args += ["--image_dir", str(digits["image_dir"]), "--per_device_train_batch_size", "8"]
    recipe_args += ["--max_steps", str(STEPS), "--save_strategy", "steps", "--save_steps", str(SAVE_EVERY)]
    recipe_args += ["--logging_steps", "1", "--seed", "7"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    env = subprocess_env(tmp_path)
    killed_probe = tmp_path / "probe_killed"

    # The uninterrupted run and the run to be killed, side by side.
    quiet = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    ref = subprocess.Popen(_command("scripts/sft_vlm.py", recipe_args, reference), cwd=REPO, env=env, **quiet)
    victim_env = {**env, "VLM_SFT_PROBE_DIR": str(killed_probe), "VLM_SFT_PROBE_HANG_AT": str(KILL_IN)}
    victim = subprocess.Popen(
        _command("tests/train_probe.py", recipe_args, resumed),
        cwd=REPO,
        env=victim_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches it and only it
    )
    deadline = time.monotonic() + 600
    record = killed_probe / "rank0.jsonl"
    while not record.is_file() or "hanging" not in record.read_text():
        assert victim.poll() is None, "the run ended before reaching the checkpoint it is to be killed in"
        assert time.monotonic() < deadline, "the run never reached the checkpoint"
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL

    # checkpoint-8 was cut off mid-write (weights and optimizer on disk, no RNG state, no trainer_state.json).
    interrupted = resumed / f"checkpoint-{KILL_IN}"
    assert (interrupted / "optimizer.pt").is_file() and not (interrupted / "trainer_state.json").exists()
    assert checkpoint_problems(interrupted), "an interrupted checkpoint must not count as complete"
    assert get_last_checkpoint(str(resumed)) == str(interrupted)  # what transformers alone would resume from
    assert last_complete_checkpoint(resumed)[0] == resumed / f"checkpoint-{KILL_IN - SAVE_EVERY}"

    # Resume: picks checkpoint-4, runs steps 5..16, and rewrites checkpoint-8 complete.
    probe = tmp_path / "probe_resumed"
    done = subprocess.run(
        _command("tests/train_probe.py", [*recipe_args, "--resume_from_checkpoint", "true"], resumed),
        cwd=REPO,
        env={**env, "VLM_SFT_PROBE_DIR": str(probe)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"Resuming from {resumed / 'checkpoint-4'}" in done.stderr
    assert f"Removing incomplete {interrupted}" in done.stderr
    assert [e["step"] for e in read_probe(probe, 0) if e["event"] == "loss"] == list(range(5, STEPS + 1))
    assert not checkpoint_problems(interrupted)

    ref_out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_out[-5000:]

    # Same number of optimizer steps (Adam's own step counter), same log, same adapter.
    for run in (reference, resumed):
        assert json.loads((run / "trainer_state.json").read_text())["global_step"] == STEPS
        assert _optimizer_steps(run / f"checkpoint-{STEPS}") == {STEPS}

    def losses(run: Path) -> list[tuple[int, float]]:
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        return [(e["step"], e["loss"]) for e in history if "loss" in e]

    assert [s for s, _ in losses(resumed)] == [s for s, _ in losses(reference)] == list(range(1, STEPS + 1))
    assert [v for _, v in losses(resumed)] == pytest.approx([v for _, v in losses(reference)], rel=1e-5)
    expected = load_file(reference / "adapter_model.safetensors")
    got = load_file(resumed / "adapter_model.safetensors")
    assert set(expected) == set(got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
