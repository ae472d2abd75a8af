"""What a run records for its model card (`training_summary.json`), and the Hub-id checks the card's metadata needs.

Written at the end of training, next to the adapter, so the card can be rebuilt from the output folder alone
(`vlm_sft.hub.model_card`). Never holds a token; local data paths are reduced to their file names.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

from vlm_sft.modeling.precision import precision_summary

SUMMARY_FILE = "training_summary.json"
_VERSIONS = ("vlm-sft", "transformers", "peft", "trl", "torch", "accelerate", "datasets", "huggingface_hub")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt", ".zip")


def is_hub_id(value: str | None) -> bool:
    """True for `name` or `namespace/name` that is not a local path (the Hub rejects paths in `base_model`)."""
    if not value or value.startswith((".", "/", "~")) or os.path.exists(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def is_hub_dataset_id(value: str | None) -> bool:
    """A Hub dataset id, not a data file such as `data/train.json` (which is also a syntactically valid id)."""
    return is_hub_id(value) and not str(value).lower().endswith(_DATA_SUFFIXES)


def framework_versions(quantized: bool = False) -> dict[str, str]:
    """Installed versions of the libraries a run depends on."""
    names = _VERSIONS + (("bitsandbytes",) if quantized else ())
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    """Enum -> its value, so TrainingArguments fields serialize to JSON."""
    return getattr(value, "value", value)


def training_summary(
    script_args: Any,
    training_args: Any,
    model_args: Any,
    vision: Any,
    *,
    num_train: int | None = None,
    num_eval: int | None = None,
) -> dict:
    """What the card needs from the recipe and is not in the output directory. Never holds a token."""
    quantized = bool(model_args.load_in_4bit or model_args.load_in_8bit)
    quantization = None
    if quantized:
        quantization = {
            "bits": 4 if model_args.load_in_4bit else 8,
            "quant_type": model_args.bnb_4bit_quant_type if model_args.load_in_4bit else "int8",
            "double_quant": bool(model_args.use_bnb_nested_quant),
            "compute_dtype": model_args.dtype,
            "kept_in_16bit": ["vision tower", "projector", "lm_head"],
        }
    world = int(getattr(training_args, "world_size", 1) or 1)
    hyper = {
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": _plain(training_args.lr_scheduler_type),
        "warmup_steps": training_args.warmup_steps,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "num_processes": world,
        "effective_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world,
        "optim": _plain(training_args.optim),
        "weight_decay": training_args.weight_decay,
        "max_grad_norm": training_args.max_grad_norm,
        "max_length": training_args.max_length,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else str(model_args.dtype),
        "activation_checkpointing": bool(getattr(training_args, "activation_checkpointing", False)),
        "seed": training_args.seed,
        "train_on": vision.train_on,
        "too_long": vision.too_long,
    }
    data_refs = [getattr(script_args, "dataset_name", None), vision.train_file, vision.eval_file]
    return {
        "base_model_name_or_path": model_args.model_name_or_path,
        "base_model_revision": model_args.model_revision,
        "hub_base_model_id": vision.hub_base_model_id,
        "datasets": list(dict.fromkeys(d for d in data_refs if is_hub_dataset_id(d))),
        # Only the file name of local data: full paths say things about the machine, not the model.
        "train_data": Path(vision.train_file).name if vision.train_file else None,
        "num_train_samples": num_train,
        "num_eval_samples": num_eval,
        "system_prompt": vision.system_prompt,
        "training_precision": precision_summary(model_args, training_args),
        "lora": {
            "preset": None if model_args.lora_target_modules else vision.lora_target,
            "target_modules_override": model_args.lora_target_modules,
            "on_vision_tower": vision.lora_on_vision_tower,
            "train_projector": vision.train_projector,
            "train_vision_tower": vision.train_vision_tower,
            "use_dora": bool(getattr(model_args, "use_dora", False)),
        },
        "quantization": quantization,
        "hyperparameters": hyper,
        "framework_versions": framework_versions(quantized),
    }
