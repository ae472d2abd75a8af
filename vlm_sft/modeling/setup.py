"""Model setup: load the base model (16-bit or 4/8-bit), freeze the vision tower, LoRA on the language model only.

The lesson's `target_modules=["q_proj", "v_proj", ...]` also hits CLIP/SigLIP layers, and its 4-bit
load quantizes the vision tower and projector too. Here every choice is made per component, from a
per-family map of module paths, and refused for a family we do not know rather than guessed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModelForImageTextToText, BitsAndBytesConfig
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import ModelConfig, get_peft_config, get_quantization_config

from vlm_sft.training.config import VisionArguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Components:
    """Module paths (from the top model, as in `named_modules()`) of a family's three parts."""

    vision_tower: str
    projector: str
    language_model: str
    lm_head: str = "lm_head"
    # More modules that carry vision features into the language model (Qwen3-VL's deepstack mergers).
    extra_projectors: tuple[str, ...] = ()

    @property
    def projectors(self) -> tuple[str, ...]:
        return (self.projector, *self.extra_projectors)


# model_type -> module paths in transformers 5 (the top model wraps a `model` with the parts).
_LLAVA_LIKE = Components("model.vision_tower", "model.multi_modal_projector", "model.language_model")
_QWEN_VL = Components("model.visual", "model.visual.merger", "model.language_model")
_IDEFICS = Components("model.vision_model", "model.connector", "model.text_model")
COMPONENTS: dict[str, Components] = {
    "llava": _LLAVA_LIKE,
    "llava_next": _LLAVA_LIKE,
    "gemma3": _LLAVA_LIKE,
    "paligemma": _LLAVA_LIKE,
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
    "qwen3_vl": Components(
        "model.visual",
        "model.visual.merger",
        "model.language_model",
        extra_projectors=("model.visual.deepstack_merger_list",),
    ),
    "idefics3": _IDEFICS,
    "smolvlm": _IDEFICS,
}

# LoRA presets: module-name alternatives inside the language model, and inside vision towers
# (CLIP/SigLIP name attention q/k/v/out_proj and MLP fc1/fc2; Qwen's ViT fuses qkv).
_TEXT_TARGETS = {
    "qv": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
_VISION_TARGETS = {
    "qv": ("q_proj", "v_proj", "qkv"),
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj", "qkv", r"attn\.proj"),
    # `mlp\.\w+` would also hit Qwen2.5-VL's activation module (mlp.act_fn), which PEFT refuses
    "all-linear": ("q_proj", "k_proj", "v_proj", "out_proj", "qkv", r"attn\.proj", "fc1", "fc2", r"mlp\.\w+_proj"),
}


def components_for(config: Any) -> Components:
    """The family's module map, or a clear refusal (listing the model's parts) for a family we have not mapped."""
    model_type = getattr(config, "model_type", None)
    if model_type not in COMPONENTS:
        raise ValueError(
            f"Unsupported model family {model_type!r}: vlm-sft needs to know which modules are the vision tower, "
            f"the projector and the language model to keep LoRA off the vision tower, and will not guess. Its "
            f"modules: {', '.join(_module_outline(config)) or 'unknown'}. Supported: {', '.join(sorted(COMPONENTS))}. "
            "Add the family to vlm_sft.model.COMPONENTS with the paths of its three parts."
        )
    return COMPONENTS[model_type]


def _module_outline(config: Any) -> list[str]:
    """Module paths two levels deep, from the architecture built on the meta device (no weights, no memory)."""
    try:
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
    except Exception:  # not an image-text-to-text architecture transformers knows: nothing to inspect
        return []
    return [name for name, _ in model.named_modules() if name and name.count(".") <= 1]


def lora_target_regex(parts: Components, preset: str, on_vision_tower: bool = False) -> str:
    """A PEFT target regex (full match on module names) scoped to the language model, optionally the vision tower."""
    text = rf"{re.escape(parts.language_model)}\..*\.({'|'.join(_TEXT_TARGETS[preset])})"
    if not on_vision_tower:
        return text
    # The projector sits inside Qwen's vision module: it is trained fully, never LoRA'd.
    not_projector = "".join(rf"(?!{re.escape(p)}\.)" for p in parts.projectors)
    vision = rf"{not_projector}{re.escape(parts.vision_tower)}\..*\.({'|'.join(_VISION_TARGETS[preset])})"
    return rf"({text}|{vision})"


def quantization_config(model_args: ModelConfig, parts: Components) -> BitsAndBytesConfig | None:
    """TRL's 4/8-bit config, with the vision tower, projector and lm_head kept in 16-bit.

    `llm_int8_skip_modules` replaces transformers' defaults and matches from the root of the module
    path, so the full paths are given (`"multi_modal_projector"` alone matches nothing).
    """
    config = get_quantization_config(model_args)
    if config is not None:
        config.llm_int8_skip_modules = [parts.vision_tower, *parts.projectors, parts.lm_head]
    return config


def _torch_dtype(name: str | None) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    return getattr(torch, name)


def load_model(
    model_args: ModelConfig, trust_remote_code: bool = False, gradient_checkpointing: bool = False
) -> tuple[Any, Components]:
    """Load the base model for training, quantized per the recipe."""
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
    )
    parts = components_for(config)
    quant = quantization_config(model_args, parts)
    device_map = None
    if quant is not None and torch.cuda.is_available() and not is_deepspeed_zero3_enabled():
        from accelerate import PartialState

        # k-bit weights cannot be moved after loading: each process loads onto its own GPU. Under ZeRO-3
        # transformers refuses any device_map; its bitsandbytes quantizer then picks the current GPU itself.
        device_map = {"": PartialState().local_process_index}
    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        dtype=_torch_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,
        quantization_config=quant,
        device_map=device_map,
        use_safetensors=True,
    )
    if quant is not None:
        guard_cpu_4bit(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model, parts


def guard_cpu_4bit(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' CPU 4-bit layers on the path that trains correctly.

    With bitsandbytes 0.50 on CPUs with AVX512-BF16, the first no-grad forward in eval mode
    (evaluation, `generate`) repacks the 4-bit weights in place, after which gradients through the
    frozen 4-bit layers are silently dropped or wrong. Turning the packed path off avoids it.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def apply_lora(model: torch.nn.Module, parts: Components, model_args: ModelConfig, vision: VisionArguments):
    """Freeze everything, then add LoRA (language model only unless asked) and train the projector fully."""
    lora: LoraConfig | None = get_peft_config(model_args)
    if lora is None:
        raise ValueError("model_args.use_peft is false: vlm-sft trains LoRA adapters only; set use_peft=True.")
    if not model_args.lora_target_modules:
        lora.target_modules = lora_target_regex(parts, vision.lora_target, vision.lora_on_vision_tower)
    to_save = list(model_args.lora_modules_to_save or [])
    if vision.train_projector:
        for path in parts.projectors:
            module = model.get_submodule(path)
            # PEFT wraps single modules only: a ModuleList (Qwen3-VL's deepstack mergers) goes by its items.
            is_list = isinstance(module, torch.nn.ModuleList)
            to_save.extend([f"{path}.{i}" for i in range(len(module))] if is_list else [path])
    if vision.train_vision_tower:
        to_save.append(parts.vision_tower)
    lora.modules_to_save = to_save or None
    peft_model = get_peft_model(model, lora)
    matched = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and parts.vision_tower in n]
    if matched and not vision.lora_on_vision_tower:
        raise ValueError(
            f"lora_target_modules={model_args.lora_target_modules!r} matched {len(matched)} vision-tower modules "
            f"(e.g. {matched[0]}). Scope the names to the language model (e.g. a regex starting with "
            f"'{parts.language_model}\\.') or set lora_on_vision_tower: true."
        )
    return peft_model


def keep_frozen_vision_tower_out_of_backward(model: torch.nn.Module, parts: Components) -> int:
    """Drop the input-requires-grad hooks transformers put on the vision tower's embeddings; return how many.

    `enable_input_require_grads` (called for PEFT + activation checkpointing by transformers, TRL and
    `prepare_model_for_kbit_training`) hooks every sub-model's input embeddings, the CLIP/SigLIP patch
    embeddings included. With the vision tower frozen, that only makes autograd record, recompute and
    back-propagate through every vision layer for gradients nobody uses. The projector's output
    requires grad on its own (it is trained), so the language model still gets its gradients.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vision = base.get_submodule(parts.vision_tower)
    projectors = [
        m for p in parts.projectors if p.startswith(parts.vision_tower + ".") for m in [base.get_submodule(p)]
    ]
    inside = {id(q) for m in projectors for q in m.parameters()}
    if any(p.requires_grad and id(p) not in inside for p in vision.parameters()):
        return 0  # LoRA on the vision tower or the tower trained: its inputs need gradients
    removed = 0
    for module in vision.modules():
        for hook_id, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") == "make_inputs_require_grads":
                del module._forward_hooks[hook_id]
                removed += 1
    return removed
