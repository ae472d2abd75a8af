"""LoRA presets (`lora_target` in a recipe): one table, read by the config check, the model setup and the estimator.

Each preset names module-name alternatives inside the language model and inside the vision tower (used only
with `lora_on_vision_tower`). CLIP/SigLIP towers call attention q/k/v/out_proj and the MLP fc1/fc2; Qwen's ViT
fuses q, k and v into `qkv` and names the rest `attn.proj` and `mlp.*`, hence the regex entries (PEFT matches
the target regex against full module names).
"""

from __future__ import annotations

TEXT_TARGETS: dict[str, tuple[str, ...]] = {
    "qv": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
VISION_TARGETS: dict[str, tuple[str, ...]] = {
    "qv": ("q_proj", "v_proj", "qkv"),
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj", "qkv", r"attn\.proj"),
    # MLP linears by name (fc1, linear_fc2, gate_proj, ...): `mlp\.\w+` would also hit the activation module.
    "all-linear": ("q_proj", "k_proj", "v_proj", "out_proj", "qkv", r"attn\.proj", r"mlp\.\w*(fc\d|proj)"),
}
LORA_TARGET_PRESETS: tuple[str, ...] = tuple(TEXT_TARGETS)
