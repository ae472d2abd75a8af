"""Tiny-but-real-shaped Qwen2.5-VL, Gemma 3 and Idefics3 for benchmarks/measure_memory.py.

Each keeps its recipe model's vocabulary, image geometry (patch size, merge / pooling / pixel shuffle) and
layer structure (Qwen's M-RoPE and windowed ViT, Gemma 3's four norms per layer, q/k norms and sliding window,
Idefics3's Llama 3), from the configs shipped in vlm_sft/modeling/builtin_configs, with narrow, shallow layers
(language-model linears multiples of 64 wide, as bitsandbytes' CPU kernels need) so a training step fits a CPU.
Batches are random ids with the image tokens the family's processor would insert, and random pixels.
"""

from __future__ import annotations

from typing import Any

from vlm_sft.modeling.resolution import ImageSettings, image_tokens

_TEXT = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2}  # fmt: skip
_VISION = {"hidden_size": 128, "intermediate_size": 256}
FAMILY_SIZES: dict[str, dict[str, Any]] = {
    "qwen2.5-vl": {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "text": {**_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                              "mrope_section": [8, 12, 12]}},  # head_dim 64: 32 rotary pairs
        "vision": {**_VISION, "depth": 2, "num_heads": 2, "out_hidden_size": 256, "fullatt_block_indexes": [1]},
        "images": ImageSettings(image_max_pixels=224 * 224),  # 224 x 224 px = 8 x 8 = 64 tokens
    },
    "gemma3": {
        "model": "google/gemma-3-4b-it",
        "text": {**_TEXT, "head_dim": 64, "query_pre_attn_scalar": 64},
        "vision": {**_VISION, "num_hidden_layers": 2, "num_attention_heads": 2},
        "images": ImageSettings(),  # 896 x 896 px -> 4,096 patches pooled to 256 tokens
    },
    "idefics3": {
        "model": "HuggingFaceM4/Idefics3-8B-Llama3",
        "text": _TEXT,
        "vision": {**_VISION, "num_hidden_layers": 2, "num_attention_heads": 2},
        "images": ImageSettings(image_splitting=False),  # one 364 px tile = 169 tokens
    },
}  # fmt: skip


def family_config(name: str) -> Any:
    from vlm_sft.cli.estimate import resolve_config

    spec = FAMILY_SIZES[name]
    config = resolve_config(spec["model"])[0]
    data = config.to_dict()
    data["text_config"].update(spec["text"])
    data["text_config"].pop("layer_types", None)  # derived again from num_hidden_layers
    data["vision_config"].update(spec["vision"])
    return type(config).from_dict(data)


class FamilyBatches:
    """Collator turning a row's seed into a sample of the family: <bos>, the image tokens, random text."""

    def __init__(self, name: str, text_tokens: int):
        self.config = family_config(name)
        self.settings = FAMILY_SIZES[name]["images"]
        self.n_image = image_tokens(self.config, self.settings)[0]
        self.text_tokens = text_tokens
        self.image_id = getattr(self.config, "image_token_id", None) or self.config.image_token_index

    def _ids(self, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        text = torch.randint(10, min(self.image_id, 100_000), (self.text_tokens,), generator=g)
        ids = torch.cat([torch.tensor([2]), torch.full((self.n_image,), self.image_id), text])
        return ids, g

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        made = [self._ids(r["seed"]) for r in rows]
        ids = torch.stack([m[0] for m in made])
        labels = ids.clone()
        labels[:, : 1 + self.n_image] = -100
        batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        batch.update(self._pixels(len(rows), ids))
        return batch

    def _pixels(self, n: int, ids) -> dict:
        import torch

        vc, model_type = self.config.vision_config, self.config.model_type
        if model_type == "qwen2_5_vl":
            side = int((self.n_image * vc.spatial_merge_size**2) ** 0.5)
            patch = 3 * vc.temporal_patch_size * vc.patch_size**2
            return {
                "pixel_values": torch.randn(n * side * side, patch),
                "image_grid_thw": torch.tensor([[1, side, side]] * n),
                "mm_token_type_ids": (ids == self.image_id).int(),
            }
        size = vc.image_size
        if model_type == "gemma3":
            return {"pixel_values": torch.randn(n, 3, size, size), "token_type_ids": (ids == self.image_id).long()}
        return {  # idefics3: one tile per image
            "pixel_values": torch.randn(n, 1, 3, size, size),
            "pixel_attention_mask": torch.ones(n, 1, size, size, dtype=torch.bool),
        }
