"""Checkpoints a run can resume from (output_dir safety: `vlm_sft.training.output_dir`).

The Trainer writes `checkpoint-N/` in place, file by file (weights, optimizer, scheduler, one RNG
file per rank, `trainer_state.json`), and transformers' `get_last_checkpoint` picks the highest N
whatever is inside: after a kill mid-write it resumes from a folder missing its optimizer state (the
Trainer then silently starts a fresh optimizer) or crashes on a truncated file. Here:

- after every save, once all ranks have written, rank 0 adds `vlm_sft_checkpoint.json`: the step and
  every file with its size, written to a temporary name and renamed (atomic), so it exists only for a
  finished checkpoint;
- a checkpoint is complete when its manifest is there and every listed file has its recorded size.
  Checkpoints written by other tools (no manifest in any checkpoint of the folder) are judged by
  their structure instead: `trainer_state.json` parses and names the folder's step, the weights are
  safetensors and not truncated;
- `--resume_from_checkpoint true` takes the last complete checkpoint; incomplete ones after it are
  removed (the Trainer would write into them again at that step, over stale files).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

MANIFEST = "vlm_sft_checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
_SHARDED_WEIGHTS = ("pytorch_model_fsdp", "global_step")  # FSDP sharded state / DeepSpeed engine folders
_PICKLED_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")
_RESUME_LAST = ("true", "last", "yes", "1")
_NO_RESUME = ("", "false", "no", "0", "none")


class OutputDirError(ValueError):
    """output_dir cannot be used: another run's results, other files, a live lock, or not a writable folder."""


class CheckpointError(ValueError):
    """The checkpoint asked for cannot be resumed from (incomplete, or not a checkpoint)."""


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match[1]) if match and path.is_dir() else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


# ---------------------------------------------------------------- completeness
def write_manifest(checkpoint: str | Path, global_step: int, world_size: int) -> Path:
    """Record every file of a finished checkpoint with its size; atomic (temporary name, then rename)."""
    folder = Path(checkpoint)
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(MANIFEST)
    }
    body = {"global_step": global_step, "world_size": world_size, "files": files}
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(body, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def _safetensors_truncated(path: Path) -> bool:
    """A safetensors file is a u64 header length, a JSON header with data offsets, then the data."""
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError):
        return True
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return path.stat().st_size < 8 + header_len + end


def _state_problems(folder: Path) -> list[str]:
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return ["no trainer_state.json"]
    try:
        step = json.loads(state_file.read_text()).get("global_step")
    except ValueError:
        return ["trainer_state.json is not valid JSON (cut off while written)"]
    if step != checkpoint_step(folder):
        return [f"trainer_state.json says step {step}, the folder says {checkpoint_step(folder)}"]
    return []


def checkpoint_problems(checkpoint: str | Path, require_manifest: bool = True) -> list[str]:
    """Why this checkpoint cannot be resumed from; empty when it is complete."""
    folder = Path(checkpoint)
    if checkpoint_step(folder) is None:
        return [f"not a checkpoint-N folder: {folder}"]
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError):
            return [f"{MANIFEST} is not valid"]
        problems = []
        for name, size in files.items():
            path = folder / name
            if not path.is_file():
                problems.append(f"missing {name}")
            elif path.stat().st_size != size:
                problems.append(f"{name} has {path.stat().st_size} bytes, {size} were written")
        return problems + _state_problems(folder)
    if require_manifest:
        return [f"no {MANIFEST}: interrupted before every rank finished writing"]
    problems = _state_problems(folder)
    weights = [folder / n for n in _WEIGHTS if (folder / n).is_file()]
    if not weights:
        pickled = [n for n in _PICKLED_WEIGHTS if (folder / n).is_file()]
        if pickled:
            problems.append(f"weights are pickled ({pickled[0]}); vlm-sft loads safetensors only")
        elif not any(p.is_dir() and p.name.startswith(_SHARDED_WEIGHTS) for p in folder.iterdir()):
            problems.append("no model or adapter weights")
    problems += [f"{p.name} is truncated" for p in weights if p.suffix == ".safetensors" and _safetensors_truncated(p)]
    return problems


def last_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, dict[Path, list[str]]]:
    """The highest-step complete checkpoint, and the problems of each newer one that was passed over."""
    checkpoints = list_checkpoints(output_dir)
    # A folder of vlm-sft checkpoints: one without a manifest was interrupted. Otherwise (other tools): structure.
    ours = any((c / MANIFEST).is_file() for c in checkpoints)
    skipped: dict[Path, list[str]] = {}
    for checkpoint in reversed(checkpoints):
        problems = checkpoint_problems(checkpoint, require_manifest=ours)
        if not problems:
            return checkpoint, skipped
        skipped[checkpoint] = problems
    return None, skipped


class CheckpointManifestCallback(TrainerCallback):
    """After each save, wait for every rank, then rank 0 marks the checkpoint complete."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every rank has written its RNG state / shards
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_manifest(folder, state.global_step, args.world_size)


# ---------------------------------------------------------------- resume
def resume_requested(value: str | bool | None) -> bool:
    """Whether `--resume_from_checkpoint` asks to resume at all (a path, or true)."""
    return value is not None and value is not False and str(value).strip().lower() not in _NO_RESUME


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """`--resume_from_checkpoint` as the Trainer needs it: None, or the path of a complete checkpoint.

    `true` (or `last`) picks the last complete checkpoint in output_dir, and starts from scratch with a
    warning when there is none; a path must be a complete checkpoint.
    """
    if not resume_requested(value):
        return None
    if value is True or str(value).strip().lower() in _RESUME_LAST:
        found, skipped = last_complete_checkpoint(output_dir)
        for checkpoint, problems in skipped.items():
            logger.warning("Not resuming from %s, it is incomplete: %s.", checkpoint, "; ".join(problems))
        if found is None:
            logger.warning("No complete checkpoint in %s: training starts from step 0.", output_dir)
            return None
        logger.info("Resuming from %s (the last complete checkpoint).", found)
        return str(found)
    path = Path(str(value))
    if not path.is_dir():
        raise CheckpointError(f"resume_from_checkpoint={value!r} is not a folder. Give a checkpoint-N folder or true.")
    ours = any((c / MANIFEST).is_file() for c in list_checkpoints(path.parent))
    problems = checkpoint_problems(path, require_manifest=ours)
    if problems:
        raise CheckpointError(
            f"Cannot resume from {path}: {'; '.join(problems)}. Pass --resume_from_checkpoint true to take the "
            "last complete checkpoint instead."
        )
    return str(path)


def remove_incomplete_after(output_dir: str | Path, resume_from: str | None) -> list[Path]:
    """Delete incomplete checkpoints newer than the one resumed from (call on the main process only)."""
    start = checkpoint_step(Path(resume_from)) if resume_from else -1
    ours = any((c / MANIFEST).is_file() for c in list_checkpoints(output_dir))
    removed = []
    for checkpoint in list_checkpoints(output_dir):
        if checkpoint_step(checkpoint) > start and checkpoint_problems(checkpoint, require_manifest=ours):
            logger.warning("Removing incomplete %s (interrupted while it was written).", checkpoint)
            shutil.rmtree(checkpoint)
            removed.append(checkpoint)
    return removed
