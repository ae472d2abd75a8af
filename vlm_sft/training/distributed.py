"""Which distributed engine runs this job, and whether the recipe's quantization can run under it.

Accelerate tells the training processes what `accelerate launch` was configured for through
environment variables (`ACCELERATE_USE_DEEPSPEED`, `ACCELERATE_DEEPSPEED_ZERO_STAGE`,
`ACCELERATE_USE_FSDP`, torchrun's `WORLD_SIZE`); a DeepSpeed JSON or FSDP options can also come in
through the recipe (`deepspeed`, `fsdp`). What works with bitsandbytes, from PEFT's docs
(accelerate/deepspeed.md, accelerate/fsdp.md) and accelerate's `fsdp2_prepare_model`:

| engine          | 16-bit LoRA | 4-bit QLoRA                                      | 8-bit  |
|-----------------|-------------|--------------------------------------------------|--------|
| one process     | yes         | yes                                              | yes    |
| DDP             | yes         | yes (each rank loads its 4-bit copy on its GPU)  | yes    |
| ZeRO-1 / ZeRO-2 | yes         | yes (weights are not sharded)                    | yes    |
| ZeRO-3 / FSDP   | yes         | only with bnb_4bit_quant_storage == dtype        | no     |

ZeRO-3 and FSDP shard weights, and only floating-point tensors can be sharded: 4-bit weights are
packed into uint8 unless `bnb_4bit_quant_storage` makes them a float dtype, and FSDP flattens a
unit's tensors into one buffer, so they must all share that dtype. 8-bit weights cannot be sharded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


class EngineError(ValueError):
    """The launch or the recipe cannot run under this distributed engine; the message says what to change."""


@dataclass(frozen=True)
class Engine:
    """What the job runs under: `single`, `ddp`, `deepspeed` (with its ZeRO stage) or `fsdp`."""

    name: str
    world_size: int = 1
    zero_stage: int | None = None

    @property
    def shards_weights(self) -> bool:
        """ZeRO-3 and FSDP split each weight across ranks; DDP and ZeRO-1/2 keep full replicas."""
        return self.name == "fsdp" or (self.name == "deepspeed" and self.zero_stage == 3)

    def describe(self) -> str:
        if self.name == "deepspeed":
            return f"DeepSpeed ZeRO-{self.zero_stage}"
        return {"single": "one process", "ddp": "DDP", "fsdp": "FSDP"}[self.name]


def _true(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def _zero_stage_of(config: Any) -> int | None:
    """`zero_optimization.stage` of a DeepSpeed config given as a dict or a JSON file path."""
    if isinstance(config, str) and config not in ("", "none"):
        with open(config) as f:
            config = json.load(f)
    if isinstance(config, Mapping):
        stage = config.get("zero_optimization", {}).get("stage")
        return int(stage) if stage not in (None, "auto") else None
    return None


def detect_engine(training_args: Any = None, environ: Mapping[str, str] | None = None) -> Engine:
    """The engine from accelerate's launcher environment, else from the recipe's `deepspeed` / `fsdp` keys."""
    env = os.environ if environ is None else environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    recipe_ds = getattr(training_args, "deepspeed", None)
    if _true(env.get("ACCELERATE_USE_DEEPSPEED")) or recipe_ds:
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        zero_stage = int(stage) if stage else _zero_stage_of(env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or recipe_ds)
        return Engine("deepspeed", world_size, 2 if zero_stage is None else zero_stage)  # accelerate's default
    if _true(env.get("ACCELERATE_USE_FSDP")) or getattr(training_args, "fsdp", None):
        return Engine("fsdp", world_size)
    return Engine("ddp" if world_size > 1 else "single", world_size)


def check_quantization(model_args: Any, engine: Engine) -> None:
    """Refuse quantization settings the engine cannot run, with the fix; silent when they can run."""
    if not engine.shards_weights:
        return
    where = engine.describe()
    if getattr(model_args, "load_in_8bit", False):
        raise EngineError(
            f"load_in_8bit cannot run under {where}: 8-bit weights cannot be sharded. Use load_in_4bit with "
            "bnb_4bit_quant_storage equal to dtype (e.g. both bfloat16), or launch with "
            "recipes/accelerate_configs/ddp.yaml or zero2.yaml, which keep full weights per GPU."
        )
    if not getattr(model_args, "load_in_4bit", False):
        return
    dtype, storage = getattr(model_args, "dtype", None), getattr(model_args, "bnb_4bit_quant_storage", None)
    if dtype in (None, "auto") or storage != dtype or not getattr(torch, dtype).is_floating_point:
        raise EngineError(
            f"load_in_4bit under {where} needs bnb_4bit_quant_storage equal to dtype, a float dtype (got "
            f"dtype={dtype!r}, bnb_4bit_quant_storage={storage!r}): {where} shards only floating-point tensors "
            "and 4-bit weights are packed as uint8 by default. Set e.g. `dtype: bfloat16` and "
            "`bnb_4bit_quant_storage: bfloat16`, or launch with recipes/accelerate_configs/ddp.yaml or zero2.yaml."
        )


def check_process_group(training_args: Any, environ: Mapping[str, str] | None = None) -> None:
    """Refuse N launched processes that would each train alone (and all write the same output_dir)."""
    env = os.environ if environ is None else environ
    launched = int(env.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:
        raise EngineError(
            f"{launched} processes were launched, but each runs as a world of 1 (no process group was formed), "
            "so they would train separately and overwrite each other's output_dir. On CPU, set `use_cpu: true` "
            "in the recipe so the ranks join one gloo group; on GPUs, check that every rank sees a GPU."
        )
    if _true(env.get("ACCELERATE_USE_CPU")) and "MASTER_ADDR" in env and launched == 1:
        # `accelerate launch --cpu --num_processes N` takes the one-process launcher and only sets MASTER_ADDR.
        logger.warning(
            "Running ONE process: `accelerate launch --cpu` ignores --num_processes. For data-parallel CPU "
            "training use --config_file recipes/accelerate_configs/cpu_ddp.yaml (with use_cpu: true in the recipe)."
        )


def unify_float_dtype(model: torch.nn.Module, dtype: torch.dtype | str) -> int:
    """Cast every floating parameter that is not a packed 4-bit weight to `dtype`; returns how many changed.

    Why: preparing a k-bit model upcasts norms and other 16-bit weights to fp32 and PEFT creates LoRA
    weights in fp32, but FSDP flattens each wrapped unit into one buffer of a single dtype and ZeRO-3
    gathers parameters in the dtype of the first one (trl#6089). Under those engines everything is kept
    in the model dtype, as TRL does: DeepSpeed's bf16 mode keeps fp32 master weights in its optimizer;
    FSDP then trains in pure bf16 (PEFT's FSDP-QLoRA setting with bnb_4bit_quant_storage: bfloat16).
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    changed = 0
    for param in model.parameters():
        if type(param).__name__ == "Params4bit" or not param.is_floating_point() or param.dtype == dtype:
            continue
        param.data = param.data.to(dtype)
        changed += 1
    return changed
