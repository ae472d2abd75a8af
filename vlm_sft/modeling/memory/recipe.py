"""The recipe values that decide training memory, read from a parsed recipe (the same parser as training)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from vlm_sft.modeling.lora import TEXT_TARGETS
from vlm_sft.modeling.memory.shapes import ModelShape

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "auto": 2}
LORA_PRESETS = TEXT_TARGETS  # the recipe's lora_target presets, defined once in vlm_sft.modeling.lora


# ---------------------------------------------------------------------------- training setup


@dataclass
class TrainingSetup:
    """The recipe values that decide memory; defaults are those of TRL's SFTConfig/ModelConfig and ours."""

    dtype: str = "float32"  # ModelConfig.dtype; also the 4-bit compute dtype
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    double_quant: bool = False  # use_bnb_nested_quant
    kbit_fp32_upcast: bool = True  # prepare_model_for_kbit_training, as vlm_sft.model.load_model calls it
    autocast: bool = True  # SFTConfig bf16 (True unless fp16) or fp16
    fp16: bool = False  # autocast to fp16 rather than bf16
    use_peft: bool = True
    lora_r: int = 16
    lora_target: str = "qv"
    lora_target_modules: list[str] | str | None = None
    lora_dropout: float = 0.05
    lora_on_vision_tower: bool = False
    train_projector: bool = True
    train_vision_tower: bool = False
    batch_size: int = 8  # per_device_train_batch_size
    text_tokens: int = 512  # per sample, when max_length is None
    max_length: int | None = None  # tokens per sample, text + image (a padded batch's worst case)
    images_per_sample: int = 1
    gradient_checkpointing: bool = True  # activation_checkpointing (TRL's default: on)
    optim: str = "adamw_torch_fused"
    device: str = "cuda"  # cuda | cpu: only the loss-head term and the CUDA context differ

    @property
    def quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit

    def seq_len(self, shape: ModelShape) -> int:
        """Tokens per sample: max_length when set, else the image tokens plus `text_tokens`."""
        if self.max_length is not None:
            return self.max_length
        return self.images_per_sample * shape.image_tokens + self.text_tokens


# Recipe keys (TRL's and ours) -> TrainingSetup fields.
_RECIPE_KEYS = {
    "dtype": "dtype",
    "load_in_4bit": "load_in_4bit",
    "load_in_8bit": "load_in_8bit",
    "use_bnb_nested_quant": "double_quant",
    "use_peft": "use_peft",
    "lora_r": "lora_r",
    "lora_target": "lora_target",
    "lora_target_modules": "lora_target_modules",
    "lora_dropout": "lora_dropout",
    "lora_on_vision_tower": "lora_on_vision_tower",
    "train_projector": "train_projector",
    "train_vision_tower": "train_vision_tower",
    "per_device_train_batch_size": "batch_size",
    "max_length": "max_length",
    "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing",
    "optim": "optim",
}


def setup_from_recipe(recipe: dict[str, Any], **overrides: Any) -> TrainingSetup:
    """A TrainingSetup from a parsed recipe (unrelated keys ignored), then explicit overrides."""
    values: dict[str, Any] = {"max_length": 1024}  # SFTConfig's default when the recipe omits the key
    for key, name in _RECIPE_KEYS.items():
        # an explicit `max_length: null` means no cap; any other null means "the default"
        if key in recipe and (recipe[key] is not None or key == "max_length"):
            values[name] = recipe[key]
    if recipe.get("bf16") is False and not recipe.get("fp16"):
        values["autocast"] = False
    values["fp16"] = bool(recipe.get("fp16"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    setup = TrainingSetup(**values)
    for name, low in (
        ("batch_size", 1),
        ("lora_r", 1),
        ("text_tokens", 1),
        ("max_length", 1),
        ("images_per_sample", 0),
    ):
        value = getattr(setup, name)
        if value is not None and value < low:
            raise ValueError(f"{name}={value}: expected an integer >= {low}.")
    if setup.lora_target not in LORA_PRESETS:
        raise ValueError(f"lora_target={setup.lora_target!r} is not one of {', '.join(LORA_PRESETS)}.")
    if setup.dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={setup.dtype!r}: expected one of bfloat16, float16, float32.")
    return setup


def recipe_values(recipe_args: Any) -> dict[str, Any]:
    """The keys of a recipe parsed by `vlm_sft.training.recipe.load_recipe` (TRL's dataclasses and ours), by name."""
    values: dict[str, Any] = {}
    for part in recipe_args[1:]:  # training_args, model_args, vision (script_args decides nothing here)
        values.update({f.name: getattr(part, f.name) for f in fields(part)})
    return values
