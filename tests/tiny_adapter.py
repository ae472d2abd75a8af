"""A non-trivial LoRA adapter on the tiny LLaVA, built in a second (no training), for the Hub, card and merge tests.

LoRA B starts at zero (the adapter would be a no-op), so B and the fully trained projector are perturbed:
base and base+adapter then give different logits, and a merge that dropped either part would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

PROMPT = "What digit is this?"


def make_tiny_adapter(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    hub_base_model_id: str | None = "tiny-org/tiny-llava",
    system_prompt: str | None = None,
) -> Path:
    """Save adapter + processor + trainable_parameters.json + a small training log + our card into out_dir."""
    from transformers import AutoProcessor
    from trl import ModelConfig, ScriptArguments, SFTConfig

    from vlm_sft.hub.model_card import write_training_card
    from vlm_sft.modeling.parameters import trainable_parameters, write_report
    from vlm_sft.modeling.setup import apply_lora, load_model
    from vlm_sft.training.config import VisionArguments

    out = Path(out_dir)
    model_args = ModelConfig(
        model_name_or_path=str(base_dir), dtype="float32", use_peft=True, lora_r=8, lora_alpha=16, lora_dropout=0.05
    )
    vision = VisionArguments(
        lora_target="attention",
        train_file="digits/train.json",  # a local file name: never a `datasets` entry
        hub_base_model_id=hub_base_model_id,
        system_prompt=system_prompt,
    )
    model, parts = load_model(model_args)
    model = apply_lora(model, parts, model_args, vision)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            elif ".modules_to_save." in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(base_dir).save_pretrained(out)
    write_report(trainable_parameters(model, parts), out)
    log = [
        {"loss": 2.5, "step": 2, "epoch": 0.5},
        {"loss": 1.25, "step": 4, "epoch": 1.0},
        {"eval_loss": 1.5, "step": 4, "epoch": 1.0},
        {"train_loss": 1.875, "train_runtime": 3.25, "step": 4, "epoch": 1.0},
    ]
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 4, "epoch": 1.0, "log_history": log}))
    training_args = SFTConfig(
        output_dir=str(out),
        learning_rate=2e-4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=4,
        use_cpu=True,
        report_to="none",
    )
    write_training_card(out, ScriptArguments(), training_args, model_args, vision, num_train=8, num_eval=4)
    return out


def digit_image(path: str | Path, seed: int = 0) -> Path:
    """A 32x32 RGB test image."""
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return Path(path)


def chat_inputs(processor, image_path: str | Path, system_prompt: str | None = None):
    """One question about the image, tokenized with the adapter's chat template (as the card's snippet does)."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    messages.append(
        {"role": "user", "content": [{"type": "image", "url": str(image_path)}, {"type": "text", "text": PROMPT}]}
    )
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
