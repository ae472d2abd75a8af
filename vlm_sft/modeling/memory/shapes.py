"""A model's shape for the memory estimate, read off the architecture built from its config on the meta device.

No layer table is written by hand: every `nn.Linear` transformers builds becomes a `Matrix` (grouped over layers),
every other parameter a `Block`, each assigned to the vision tower, projector, language model or lm_head by the
family's module map (`vlm_sft.modeling.setup.COMPONENTS`, the same map training uses). Image tokens per image come
from `vlm_sft.modeling.resolution` at the recipe's resolution settings. Building on the meta device allocates no
memory, so a 7B config takes about a second.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from vlm_sft.modeling.resolution import ImageSettings, image_tokens


@dataclass(frozen=True)
class Matrix:
    """A linear layer repeated in `count` layers; `path` holds `{i}` for the layer index."""

    component: str  # vision_tower | projector | language_model | lm_head
    path: str
    d_in: int
    d_out: int
    count: int = 1
    bias: bool = False
    indices: tuple[int, ...] = ()  # the layer indices `{i}` takes (default: 0 .. count-1)

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def numel(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))

    def paths(self) -> list[str]:
        if "{i}" not in self.path:
            return [self.path]
        return [self.path.format(i=i) for i in (self.indices or range(self.count))]


@dataclass(frozen=True)
class Block:
    """Parameters outside linear layers: embeddings, norms, convolutions, position tables."""

    component: str
    name: str
    numel: int


@dataclass(frozen=True)
class TextDims:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


@dataclass(frozen=True)
class VisionDims:
    hidden: int
    layers: int
    tokens: int  # sequence length inside the tower per image (patches, + CLS; all tiles)
    intermediate: int = 0


@dataclass(frozen=True)
class ModelShape:
    """Everything the estimate needs from a config: linear layers, other parameters, dimensions."""

    description: str
    matrices: tuple[Matrix, ...]
    blocks: tuple[Block, ...]
    text: TextDims
    vision: VisionDims
    image_tokens: int  # language-model tokens per image (the settings' largest image)
    parts: Any = None  # the family's Components: LoRA targets then follow apply_lora's own regex

    @classmethod
    def from_config(cls, config: Any, image: ImageSettings | None = None) -> ModelShape:
        """Shape of a transformers config of a supported family, at the given image-resolution settings."""
        from vlm_sft.modeling.setup import components_for

        parts = components_for(config)  # an unmapped family: a ValueError naming it and what is supported
        model = build_on_meta(config)
        matrices, blocks = _parameters(model, parts)
        text = text_dims(config)
        lm_tokens, tower_tokens = image_tokens(config, image or ImageSettings())
        vc = config.vision_config
        return cls(
            description=f"{config.model_type}: {vc.model_type} + {config.get_text_config().model_type}",
            matrices=tuple(matrices),
            blocks=tuple(blocks),
            text=text,
            vision=vision_dims(vc, tower_tokens),
            image_tokens=lm_tokens,
            parts=parts,
        )

    def num_params(self, component: str | None = None) -> int:
        parts = [m.numel for m in self.matrices] + [b.numel for b in self.blocks]
        comps = [m.component for m in self.matrices] + [b.component for b in self.blocks]
        return sum(n for n, c in zip(parts, comps, strict=True) if component in (None, c))

    def lm_linears(self) -> list[Matrix]:
        """The language model's linear layers: what bitsandbytes quantizes."""
        return [m for m in self.matrices if m.component == "language_model"]


def build_on_meta(config: Any) -> Any:
    """The architecture of `config` on the meta device (no memory), or a ValueError saying why it cannot be built."""
    import torch
    from transformers import AutoModelForImageTextToText

    try:
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(config)
    except Exception as err:  # transformers raises many kinds for a config it cannot build; all mean "no shape"
        raise ValueError(
            f"Cannot build the {config.model_type!r} architecture from its config on the meta device "
            f"({type(err).__name__}: {err}); the estimator reads shapes from the built modules."
        ) from err


def component_of(name: str, parts: Any) -> str:
    """Which part a parameter or module path belongs to (projectors first: Qwen's merger sits inside the tower)."""

    def under(prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    if any(under(p) for p in parts.projectors) or name.startswith("model.image_newline"):
        return "projector"
    if under(parts.vision_tower):
        return "vision_tower"
    if under(parts.lm_head):
        return "lm_head"
    return "language_model"  # everything else is quantized with the language model (see quantization_config)


_INDEX = re.compile(r"\.(\d+)\.")


def _parameters(model: Any, parts: Any) -> tuple[list[Matrix], list[Block]]:
    """Linear layers grouped over their layer index, and the remaining parameters summed per component."""
    import torch

    params = dict(model.named_parameters())  # tied weights appear once (a tied lm_head not at all)
    groups: dict[tuple[str, str, int, int, bool], list[int]] = defaultdict(list)
    in_linears: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or f"{name}.weight" not in params:
            continue
        bias = module.bias is not None
        in_linears.update({f"{name}.weight", f"{name}.bias"} if bias else {f"{name}.weight"})
        match = _INDEX.search(name)
        path = name[: match.start()] + ".{i}." + name[match.end() :] if match else name
        key = (component_of(name, parts), path, module.in_features, module.out_features, bias)
        groups[key].append(int(match.group(1)) if match else 0)
    matrices = [
        Matrix(comp, path, d_in, d_out, len(idx), bias, tuple(idx) if "{i}" in path else ())
        for (comp, path, d_in, d_out, bias), idx in groups.items()
    ]
    other: dict[str, int] = defaultdict(int)
    for name, param in params.items():
        if name not in in_linears:
            other[component_of(name, parts)] += param.numel()
    blocks = [Block(comp, "embeddings, norms, convolutions", n) for comp, n in other.items()]
    return matrices, blocks


def text_dims(config: Any) -> TextDims:
    tc = config.get_text_config()
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    kv = getattr(tc, "num_key_value_heads", None) or heads
    return TextDims(tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, heads, kv, head_dim, tc.vocab_size)


def vision_dims(vc: Any, tokens: int) -> VisionDims:
    """Width and depth of the vision encoder (Qwen2-VL names them embed_dim and depth)."""
    hidden = getattr(vc, "embed_dim", None) or vc.hidden_size
    layers = getattr(vc, "num_hidden_layers", None) or vc.depth
    inter = getattr(vc, "intermediate_size", None) or int(hidden * getattr(vc, "mlp_ratio", 4))
    return VisionDims(hidden, layers, tokens, inter)
