"""Precision rules: which quantization x mixed precision x dtype combinations train, and in what dtype.

The matrix (quantization none / 8-bit / 4-bit, mixed precision bf16 / fp16 / none, `dtype`
bfloat16 / float16 / float32, `bnb_4bit_quant_storage`) either trains or is refused by
`check_precision` before anything loads. `align_trainable_dtype` settles the one conflict the
libraries leave: on a quantized base, TRL's SFTTrainer casts every trainable parameter to bf16
(the QLoRA paper's adapters) after `prepare_model_for_kbit_training` upcast everything that is not
quantized (vision tower, norms, embeddings) to fp32. LoRA layers cast their input to their own
dtype; the projector's `modules_to_save` copy does not, so without bf16 autocast its bf16 weights
meet the fp32 vision features ("expected m1 and m2 to have the same dtype").
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

HALF = ("bfloat16", "float16")


class PrecisionError(ValueError):
    """A recipe whose precision keys cannot train together; the message names the keys to change."""


def mixed_precision(training_args: Any) -> str:
    """`bf16`, `fp16` or `no`: the autocast the Trainer will run under."""
    if getattr(training_args, "bf16", False):
        return "bf16"
    return "fp16" if getattr(training_args, "fp16", False) else "no"


def quantization(model_args: Any) -> str:
    """`4-bit`, `8-bit` or `none`."""
    if getattr(model_args, "load_in_4bit", False):
        return "4-bit"
    return "8-bit" if getattr(model_args, "load_in_8bit", False) else "none"


def _has_fp16_device(training_args: Any) -> bool:
    """Whether accelerate will run fp16 autocast (it does on GPUs only; on CPU `fp16` is silently a no-op)."""
    if getattr(training_args, "use_cpu", False):
        return False
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def check_precision(model_args: Any, training_args: Any) -> None:
    """Refuse, before the model loads, precision keys that would not train or would be ignored."""
    mp, dtype, quant = mixed_precision(training_args), model_args.dtype, quantization(model_args)
    if mp == "fp16" and dtype == "bfloat16":
        raise PrecisionError(
            "fp16: true with dtype: bfloat16 mixes two half formats (bfloat16 weights in float16 autocast overflow): "
            "on a GPU with bfloat16 (Ampere or newer) set bf16: true instead; on an older GPU (T4, V100) set "
            "dtype: float16 (and bnb_4bit_quant_storage: float16 for 4-bit)."
        )
    if mp == "bf16" and dtype == "float16" and quant == "none":
        # (A quantized base is fine: prepare_model_for_kbit_training upcasts every unquantized weight to fp32.)
        raise PrecisionError(
            "bf16: true with dtype: float16 mixes two half formats (CPU autocast cannot even concatenate them): "
            "set dtype: bfloat16 or float32 with bf16, or fp16: true with dtype: float16 on a GPU without bfloat16."
        )
    if mp == "no" and dtype == "float16" and quant == "none":
        raise PrecisionError(
            "dtype: float16 with bf16: false and fp16: false trains float16 weights without loss scaling (the "
            "projector and its updates underflow): set fp16: true (GPU), or dtype: float32 / bfloat16, or "
            "load_in_4bit / load_in_8bit."
        )
    if mp == "fp16" and not _has_fp16_device(training_args):
        raise PrecisionError(
            "fp16: true needs a GPU (accelerate runs float16 autocast with loss scaling on GPUs only; on CPU it would "
            "silently train without it): set fp16: false (bf16: true or false works on CPU)."
        )
    storage = getattr(model_args, "bnb_4bit_quant_storage", None)
    if quant != "4-bit" and (storage is not None or getattr(model_args, "use_bnb_nested_quant", False)):
        logger.warning(
            "bnb_4bit_quant_storage / use_bnb_nested_quant apply to 4-bit loading only (load_in_4bit: true); "
            "ignored for a %s base.",
            "8-bit" if quant == "8-bit" else "16/32-bit",
        )


def trainable_dtype(quantized: bool, mp: str) -> torch.dtype | None:
    """The dtype trainable parameters must have under this setup, or None to leave them as loaded.

    - quantized + bf16 autocast: TRL's bf16 adapters and projector; autocast reconciles them with fp32 inputs.
    - quantized otherwise: fp32, the dtype of every unquantized module after `prepare_model_for_kbit_training`
      (without autocast the projector must match its fp32 inputs; under fp16 autocast the GradScaler needs fp32).
    - unquantized under autocast: fp32 master weights (PEFT's `cast_mixed_precision_params` rule).
    - unquantized without autocast: the loaded dtype (the projector matches the tower feeding it; LoRA casts itself).
    """
    if quantized:
        return None if mp == "bf16" else torch.float32
    return torch.float32 if mp != "no" else None


def align_trainable_dtype(model: torch.nn.Module, training_args: Any) -> int:
    """Cast trainable parameters to `trainable_dtype` (after SFTTrainer's own casts); return how many changed."""
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    target = trainable_dtype(quantized, mixed_precision(training_args))
    if target is None:
        return 0
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)
            changed += 1
    if changed:
        logger.info("Trainable parameters cast to %s (%d tensors) for this precision setup.", target, changed)
    return changed


def precision_summary(model_args: Any, training_args: Any) -> dict[str, str]:
    """What training used, for the model card and reports: quantization, weights dtype, autocast, 4-bit storage."""
    summary = {
        "quantization": quantization(model_args),
        "dtype": str(model_args.dtype or "auto"),
        "mixed_precision": mixed_precision(training_args),
    }
    if summary["quantization"] == "4-bit":
        summary["bnb_4bit_quant_storage"] = str(getattr(model_args, "bnb_4bit_quant_storage", None) or "uint8")
    return summary


def precision_line(summary: dict[str, str]) -> str:
    """The model card's sentence for `precision_summary`: what training used, and the `--dtype` to use it in."""
    storage = f", 4-bit storage {summary['bnb_4bit_quant_storage']}" if "bnb_4bit_quant_storage" in summary else ""
    dtype = summary.get("dtype", "auto")
    autocast = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "no": "no autocast"}.get(summary["mixed_precision"])
    return (
        f"Training precision: {summary['quantization']} base, dtype {dtype}, {autocast}{storage}. Evaluate, infer and "
        f"merge in the same dtype: `--dtype {dtype}` (vlm-sft eval / infer / merge)."
    )


def inference_dtype(requested: str, device: str) -> str:
    """The dtype eval, infer and merge load the base in: `requested`, or for `auto` the fastest that is exact enough
    on `device` (bfloat16 on a GPU with bf16, float16 on an older GPU, float32 on CPU, where 16-bit matmuls are
    slow or emulated)."""
    if requested != "auto":
        return requested
    if device.startswith("cuda") and torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"
