"""The training entry point (`vlm_sft.training.train.main`) with observation hooks, for multi-process and resume tests.

    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml tests/train_probe.py recipe.yaml ...

Nothing about training changes; the hooks only record, per rank, into $VLM_SFT_PROBE_DIR/rank<r>.jsonl:
the world size of the process group, the samples of every batch, every loss with the batch's token
count, which ranks saved weights where, and (in rank<r>_final.safetensors) the trainable weights each
rank holds when training ends. With $VLM_SFT_PROBE_HANG_AT=N the process stops inside the Trainer's
checkpoint write at step N (after weights and optimizer, before RNG state and trainer_state.json) and
waits to be killed, so a test can SIGKILL it mid-write at a known point.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import Trainer
from trl import SFTTrainer

from vlm_sft.collator import VisionSFTCollator
from vlm_sft.training.train import main

PROBE = Path(os.environ["VLM_SFT_PROBE_DIR"])
HANG_AT = int(os.environ.get("VLM_SFT_PROBE_HANG_AT", "-1"))


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _record(**entry) -> None:
    with (PROBE / f"rank{_rank()}.jsonl").open("a") as f:
        f.write(json.dumps({"rank": _rank(), **entry}) + "\n")


def _question(row: dict) -> str:
    user = next(m for m in row["messages"] if m["role"] == "user")
    return "".join(p.get("text") or "" for p in user["content"])


collate = VisionSFTCollator.__call__


def recording_collate(self, rows):
    _record(event="batch", samples=[_question(r) for r in rows], images=[len(r.get("images") or []) for r in rows])
    return collate(self, rows)


compute_loss = SFTTrainer.compute_loss


def recording_compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    result = compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
    loss = result[0] if return_outputs else result
    if model.training:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        items = int(num_items_in_batch) if num_items_in_batch is not None else None
        _record(event="loss", step=self.state.global_step + 1, loss=loss.item(), items=items, world_size=world)
    return result


save_model = Trainer.save_model


def recording_save_model(self, output_dir=None, _internal_call=False):
    if not _internal_call:  # the final save, called by every rank: record what each rank holds now
        model = self.accelerator.unwrap_model(self.model)
        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(state, PROBE / f"rank{_rank()}_final.safetensors")
    return save_model(self, output_dir, _internal_call=_internal_call)


save_pretrained = PeftModel.save_pretrained


def recording_save_pretrained(self, save_directory, *args, **kwargs):
    _record(event="save_pretrained", path=str(save_directory))
    return save_pretrained(self, save_directory, *args, **kwargs)


save_rng_state = Trainer._save_rng_state


def hanging_save_rng_state(self, output_dir):
    if self.state.global_step == HANG_AT:
        _record(event="hanging", step=HANG_AT, checkpoint=str(output_dir))
        time.sleep(600)  # killed here by the test
    return save_rng_state(self, output_dir)


VisionSFTCollator.__call__ = recording_collate
SFTTrainer.compute_loss = recording_compute_loss
Trainer.save_model = recording_save_model
PeftModel.save_pretrained = recording_save_pretrained
Trainer._save_rng_state = hanging_save_rng_state

if __name__ == "__main__":
    PROBE.mkdir(parents=True, exist_ok=True)
    sys.exit(main())
