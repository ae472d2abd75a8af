"""GPU benchmark: LLaVA-1.5-7B-shaped QLoRA (and bf16 LoRA) with recipes/llava_qlora.yaml settings, no download.

    python benchmarks/gpu_qlora.py --size 7b --out gpu_results.json   # on a GPU machine
    python benchmarks/gpu_qlora.py --size tiny --steps 2                # CPU smoke test (CI-size)
    python benchmarks/gpu_qlora.py --size qwen2.5-vl-7b --out gpu_qwen.json   # Qwen2.5-VL-7B shape (GPU)
    python benchmarks/gpu_qlora.py --size qwen-tiny --steps 1           # its CPU smoke test

Qwen2.5-VL-7B: the shipped config (vlm_sft/modeling/builtin_configs), random weights, the settings of
recipes/qwen2_5_vl_7b_qlora.yaml: one 980 x 980 px image per sample = 70 x 70 patches = 1,225 tokens.

Random weights built from config (CLIP ViT-L/14-336 + Llama-2-7B text, vocab 32064), saved once as
safetensors, then loaded through the project's own model setup (`vlm_sft.modeling.setup.load_model` +
`apply_lora`: 4-bit NF4, double quantization, bf16 compute, vision tower / projector / lm_head
unquantized, LoRA r=16 on q/k/v/o of the language model, projector trained fully). For batch 1 and
4, with and without activation checkpointing: peak GPU memory, tokens/s and samples/s over a fixed
number of optimizer steps; then the same in bf16 LoRA. Samples are 576 image tokens + 160 text tokens.

On a machine without network, trl and bitsandbytes can come as wheel files (see the device notes
in benchmarks/README.md); torch, transformers, peft and accelerate must be installed.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

SIZES = {
    # vision: CLIP ViT-L/14 at 336 px; text: Llama-2-7B (Vicuna) as in llava-hf/llava-1.5-7b-hf
    "7b": {
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "image_size": 336, "patch_size": 14, "projection_dim": 768},
        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 32064},
    },
    # CPU smoke test: same code path, toy widths (multiples of 64 for bitsandbytes' CPU kernels)
    "tiny": {
        "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "image_size": 56, "patch_size": 14, "projection_dim": 64},
        "text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "vocab_size": 1024},
    },
}  # fmt: skip
TEXT_TOKENS = 160
# Qwen2.5-VL: patches per side of each image (merged 2 x 2 into one token): 70 x 70 -> 1,225 tokens, the largest
# square image under recipes/qwen2_5_vl_7b_qlora.yaml's image_max_pixels (980 x 980 px).
QWEN_GRID = {"qwen2.5-vl-7b": 70, "qwen-tiny": 4}
QWEN_TINY = {
    "text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                           "mrope_section": [4, 6, 6]}},
    "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "out_hidden_size": 128,
               "fullatt_block_indexes": [1]},
}  # fmt: skip


def qwen_config(size: str):
    """The shipped Qwen2.5-VL-7B-Instruct config, or a toy of it with the same image geometry."""
    from vlm_sft.cli.estimate import resolve_config

    config = resolve_config("Qwen/Qwen2.5-VL-7B-Instruct")[0]
    if size == "qwen-tiny":
        data = config.to_dict()
        data["text_config"].update(QWEN_TINY["text"])
        data["text_config"].pop("layer_types", None)  # derived again from num_hidden_layers
        data["vision_config"].update(QWEN_TINY["vision"])
        config = type(config).from_dict(data)
    return config


def build_checkpoint(size: str, out: Path) -> Path:
    """Random-weight LLaVA of the given size saved as bf16 safetensors (built on the GPU when there is one)."""
    from transformers import LlavaForConditionalGeneration

    if size in QWEN_GRID:
        from transformers import Qwen2_5_VLForConditionalGeneration

        model_cls, config = Qwen2_5_VLForConditionalGeneration, qwen_config(size)
    else:
        model_cls, config = LlavaForConditionalGeneration, _llava_config(size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        torch.manual_seed(0)
        model = model_cls(config).to(torch.bfloat16)
    model.save_pretrained(out)
    del model
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def _llava_config(size: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    spec = SIZES[size]
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**spec["vision"]),
        text_config=LlamaConfig(**spec["text"], max_position_embeddings=4096),
        image_token_id=spec["text"]["vocab_size"] - 64,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def make_batch(config, batch_size: int, device) -> dict:
    if config.model_type == "qwen2_5_vl":
        return make_qwen_batch(config, batch_size, device)
    n_image = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    ids = torch.randint(10, config.image_token_id - 1, (batch_size, n_image + TEXT_TOKENS))
    ids[:, 1 : 1 + n_image] = config.image_token_id
    labels = ids.clone()
    labels[:, : 1 + n_image + TEXT_TOKENS // 2] = -100  # the answer half is trained
    size = config.vision_config.image_size
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch_size, 3, size, size, dtype=torch.bfloat16).to(device),
        "labels": labels.to(device),
    }


def make_qwen_batch(config, batch_size: int, device) -> dict:
    """Qwen2.5-VL inputs as its processor makes them: flattened patches, the grid, and token types for M-RoPE."""
    vc = config.vision_config
    side = QWEN_GRID["qwen-tiny" if vc.depth == QWEN_TINY["vision"]["depth"] else "qwen2.5-vl-7b"]
    n_image = side * side // vc.spatial_merge_size**2
    ids = torch.randint(10, 150_000, (batch_size, n_image + TEXT_TOKENS))
    ids[:, 1 : 1 + n_image] = config.image_token_id
    labels = ids.clone()
    labels[:, : 1 + n_image + TEXT_TOKENS // 2] = -100
    patch = 3 * vc.temporal_patch_size * vc.patch_size**2
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "mm_token_type_ids": (ids == config.image_token_id).int().to(device),
        "pixel_values": torch.randn(batch_size * side * side, patch, dtype=torch.bfloat16).to(device),
        "image_grid_thw": torch.tensor([[1, side, side]] * batch_size).to(device),
        "labels": labels.to(device),
    }


def run_config(checkpoint: Path, *, qlora: bool, batch_size: int, checkpointing: bool, steps: int) -> dict:
    from trl import ModelConfig

    from vlm_sft.modeling.setup import apply_lora, keep_frozen_vision_tower_out_of_backward, load_model
    from vlm_sft.training.config import VisionArguments

    args = ModelConfig(
        model_name_or_path=str(checkpoint), dtype="bfloat16", load_in_4bit=qlora, use_bnb_nested_quant=True,
        bnb_4bit_quant_type="nf4", use_peft=True, lora_r=16, lora_alpha=32, lora_dropout=0.05,
    )  # fmt: skip
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, parts = load_model(args, gradient_checkpointing=checkpointing)
    if cuda and not qlora:
        model.to("cuda")
    if checkpointing and not qlora:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = apply_lora(model, parts, args, VisionArguments(lora_target="attention"))
    keep_frozen_vision_tower_out_of_backward(model, parts)  # as training's FrozenVisionTowerCallback does
    device = next(p.device for p in model.parameters() if p.requires_grad)
    weights_gb = torch.cuda.memory_allocated() / 2**30 if cuda else None
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batch = make_batch(model.base_model.model.config, batch_size, device)
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up kernels and the allocator
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    per_step = sum(times[1:]) / steps
    tokens = batch["input_ids"].numel()
    result = {
        "mode": "qlora" if qlora else "bf16-lora",
        "batch_size": batch_size,
        "activation_checkpointing": checkpointing,
        "seconds_per_step": round(per_step, 4),
        "tokens_per_second": round(tokens / per_step, 1),
        "samples_per_second": round(batch_size / per_step, 2),
        "weights_gib": round(weights_gb, 2) if cuda else None,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "loss": round(loss.item(), 4),
    }
    del model, optim, batch
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted([*SIZES, *QWEN_GRID]), default="7b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["qlora", "bf16-lora"], choices=["qlora", "bf16-lora"])
    parser.add_argument("--checkpoint-dir", default=None, help="reuse a built random-weight checkpoint")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    workdir = Path(args.checkpoint_dir or tempfile.mkdtemp(prefix="llava_random_"))
    if not (workdir / "config.json").exists():
        start = time.perf_counter()
        build_checkpoint(args.size, workdir)
        print(f"built random {args.size} checkpoint in {time.perf_counter() - start:.0f} s: {workdir}", flush=True)
    results = []
    for mode in args.modes:
        for batch_size in args.batch_sizes:
            for checkpointing in (False, True):
                try:
                    r = run_config(workdir, qlora=mode == "qlora", batch_size=batch_size,
                                   checkpointing=checkpointing, steps=args.steps)  # fmt: skip
                except torch.OutOfMemoryError:
                    r = {"mode": mode, "batch_size": batch_size, "activation_checkpointing": checkpointing,
                         "error": "out of memory"}  # fmt: skip
                    gc.collect()
                    torch.cuda.empty_cache()
                print(json.dumps(r), flush=True)
                results.append(r)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {platform.machine()}"
    summary = {"size": args.size, "device": device, "torch": torch.__version__, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
