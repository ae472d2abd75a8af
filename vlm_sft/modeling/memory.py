"""Training-memory estimate for (Q)LoRA on a vision-language model: arithmetic from its config and the recipe.

No weights are loaded. Parameter counts come from the config (tests check them against the real
modules built on the meta device); bytes come from how the pinned stack (transformers 5.23,
peft 0.21, trl 1.16, bitsandbytes 0.50) stores each part during `vlm_sft.training.train`:

- 4-bit NF4 base: the language model's linear layers at 0.5 byte/parameter plus one absmax per
  64-value block (fp32, or 8-bit with double quantization plus an fp32 absmax per 256 blocks).
  The vision tower, projector, embeddings, lm_head and norms are not quantized, and
  `prepare_model_for_kbit_training` (called by `vlm_sft.model.load_model`) upcasts them to fp32.
- Trainable: LoRA, r(d_in + d_out) per adapted d_in x d_out matrix, and a full copy of the
  projector (PEFT's `modules_to_save` keeps the original beside it). PEFT upcasts LoRA to fp32 on
  a 16-bit base; on a quantized base TRL casts every trainable parameter to bf16. Gradients and
  AdamW's two moments take the dtype of their parameter (torch keeps no fp32 master copy under
  autocast).
- Activations: what autograd saves per token of each decoder layer (listed in `_layer_saved`),
  or only each layer's input with gradient checkpointing plus one layer recomputed in backward,
  and the transient peak of TRL's fused LM-head loss, which differs between CUDA (Triton, one
  bf16 tile of at most 4096 x 32768 logits) and CPU (torch fallback: 29 more bytes per logit).

`device="cpu"` is what `benchmarks/measure_memory.py` validates against measured peaks;
`device="cuda"` changes only the loss-head term and adds the CUDA context, and is not validated
here (no GPU in this environment).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from vlm_sft.modeling.lora import TEXT_TARGETS, VISION_TARGETS

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "auto": 2}
LORA_PRESETS = TEXT_TARGETS  # the recipe's lora_target presets (vlm_sft.modeling.lora)
# TRL's fused LM-head loss (trl/kernels/chunked_logprob.py) scores tokens in tiles of at most
# TOKEN_CHUNK x VOCAB_CHUNK logits.
TOKEN_CHUNK, VOCAB_CHUNK = 4096, 32768
# fp32 temporaries per logit at the loss's peak with the torch fallback (no Triton, e.g. CPU), read off
# `_backward_tile` and confirmed with the profiler: y, z, log_p, p, grad (4 B each), is_target (1 B),
# is_target.float() and (is_target.float() - p) (4 B each) = 29 B; the forward's `_forward_tile` peaks at 13.
CPU_LOSS_FP32_BYTES = 29
CUDA_CONTEXT_BYTES = GiB // 2  # CUDA context, cuBLAS workspace: outside PyTorch's counters (approximate)
SUPPORTED_TEXT = ("llama", "mistral", "qwen2")
SUPPORTED_VISION = ("clip_vision_model", "siglip_vision_model")
SUPPORTED_FAMILIES = ("llava", "llava_next")


# ---------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class Matrix:
    """A linear layer repeated in `count` layers; `path` holds `{i}` for the layer index."""

    component: str  # vision_tower | projector | language_model | lm_head
    path: str
    d_in: int
    d_out: int
    count: int = 1
    bias: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def numel(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))

    def paths(self) -> list[str]:
        return [self.path.format(i=i) for i in range(self.count)] if "{i}" in self.path else [self.path]


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
    tokens: int  # sequence length inside the tower per image (patches + CLS)


@dataclass(frozen=True)
class ModelShape:
    """Everything the estimate needs from a config: linear layers, other parameters, dimensions."""

    description: str
    matrices: tuple[Matrix, ...]
    blocks: tuple[Block, ...]
    text: TextDims
    vision: VisionDims
    image_tokens: int  # language-model tokens per image

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Shape of a transformers config (a `PretrainedConfig`) of a supported family."""
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_FAMILIES:
            raise ValueError(
                f"The memory estimator does not know the {model_type!r} family yet (supported: "
                f"{', '.join(SUPPORTED_FAMILIES)}). Its parameter layout and image-token count must be added to "
                "vlm_sft/modeling/memory.py first."
            )
        text_m, text_b, text = _text_parts(config.text_config, "model.language_model")
        vis_m, vis_b, vision, grid = _vision_parts(config.vision_config, "model.vision_tower")
        feature_layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        bias = getattr(config, "multimodal_projector_bias", True)
        proj = (
            Matrix(
                "projector",
                "model.multi_modal_projector.linear_1",
                vision.hidden * feature_layers,
                text.hidden,
                bias=bias,
            ),
            Matrix("projector", "model.multi_modal_projector.linear_2", text.hidden, text.hidden, bias=bias),
        )
        blocks = list(text_b + vis_b)
        image_tokens = grid * grid + (1 if config.vision_feature_select_strategy == "full" else 0)
        if model_type == "llava_next":
            blocks.append(Block("projector", "image_newline", text.hidden))
            image_tokens = _llava_next_max_tokens(config, grid, image_tokens)
        tied = bool(getattr(config, "tie_word_embeddings", False) or config.text_config.tie_word_embeddings)
        head = () if tied else (Matrix("lm_head", "lm_head", text.hidden, text.vocab),)
        return cls(
            description=f"{model_type}: {config.vision_config.model_type} + {config.text_config.model_type}",
            matrices=tuple(vis_m + list(proj) + text_m + list(head)),
            blocks=tuple(blocks),
            text=text,
            vision=vision,
            image_tokens=image_tokens,
        )

    def num_params(self, component: str | None = None) -> int:
        parts = [m.numel for m in self.matrices] + [b.numel for b in self.blocks]
        comps = [m.component for m in self.matrices] + [b.component for b in self.blocks]
        return sum(n for n, c in zip(parts, comps, strict=True) if component in (None, c))

    def lm_linears(self) -> list[Matrix]:
        """The language model's linear layers: what bitsandbytes quantizes."""
        return [m for m in self.matrices if m.component == "language_model"]


def _text_parts(tc: Any, prefix: str) -> tuple[list[Matrix], list[Block], TextDims]:
    """Llama-style decoder: q/k/v/o, gated MLP (gate/up/down), RMSNorm before attention and MLP."""
    if tc.model_type not in SUPPORTED_TEXT:
        raise ValueError(
            f"Language model {tc.model_type!r} is not modelled by the memory estimator (supported: "
            f"{', '.join(SUPPORTED_TEXT)})."
        )
    h, inter, n = tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers
    heads = tc.num_attention_heads
    kv = getattr(tc, "num_key_value_heads", None) or heads
    hd = getattr(tc, "head_dim", None) or h // heads
    qkv_bias = tc.model_type == "qwen2" or bool(getattr(tc, "attention_bias", False))
    o_bias = bool(getattr(tc, "attention_bias", False))
    mlp_bias = bool(getattr(tc, "mlp_bias", False))
    layer = f"{prefix}.layers.{{i}}"
    matrices = [
        Matrix("language_model", f"{layer}.self_attn.q_proj", h, heads * hd, n, qkv_bias),
        Matrix("language_model", f"{layer}.self_attn.k_proj", h, kv * hd, n, qkv_bias),
        Matrix("language_model", f"{layer}.self_attn.v_proj", h, kv * hd, n, qkv_bias),
        Matrix("language_model", f"{layer}.self_attn.o_proj", heads * hd, h, n, o_bias),
        Matrix("language_model", f"{layer}.mlp.gate_proj", h, inter, n, mlp_bias),
        Matrix("language_model", f"{layer}.mlp.up_proj", h, inter, n, mlp_bias),
        Matrix("language_model", f"{layer}.mlp.down_proj", inter, h, n, mlp_bias),
    ]
    blocks = [
        Block("language_model", "embed_tokens", tc.vocab_size * h),
        Block("language_model", "norms", (2 * n + 1) * h),
    ]
    return matrices, blocks, TextDims(h, inter, n, heads, kv, hd, tc.vocab_size)


def _vision_parts(vc: Any, prefix: str) -> tuple[list[Matrix], list[Block], VisionDims, int]:
    """CLIP / SigLIP ViT encoder: patch embedding, position table, pre-LN layers with biased linears."""
    if vc.model_type not in SUPPORTED_VISION:
        raise ValueError(
            f"Vision tower {vc.model_type!r} is not modelled by the memory estimator (supported: "
            f"{', '.join(SUPPORTED_VISION)})."
        )
    d, inter, n, p = vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers, vc.patch_size
    grid = vc.image_size // p
    clip = vc.model_type == "clip_vision_model"
    layer = f"{prefix}.encoder.layers.{{i}}"  # transformers 5: the tower is the bare ViT
    matrices = [
        Matrix("vision_tower", f"{layer}.self_attn.{x}", d, d, n, True)
        for x in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]
    matrices += [
        Matrix("vision_tower", f"{layer}.mlp.fc1", d, inter, n, True),
        Matrix("vision_tower", f"{layer}.mlp.fc2", inter, d, n, True),
    ]
    tokens = grid * grid + (1 if clip else 0)  # CLIP prepends a class token
    blocks = [
        # patch conv (CLIP without bias), position table, class embedding (CLIP)
        Block("vision_tower", "embeddings", 3 * p * p * d + (0 if clip else d) + tokens * d + (d if clip else 0)),
        # two LayerNorms per layer, plus post_layernorm (and CLIP's pre_layrnorm)
        Block("vision_tower", "norms", (2 * n + (2 if clip else 1)) * 2 * d),
    ]
    if not clip and getattr(vc, "vision_use_head", True):
        # SigLIP's attention-pooling head: probe, nn.MultiheadAttention, LayerNorm, MLP
        blocks.append(
            Block("vision_tower", "head", d + 3 * d * d + 3 * d + d * d + d + 2 * d + 2 * d * inter + inter + d)
        )
    return matrices, blocks, VisionDims(d, n, tokens), grid


def _llava_next_max_tokens(config: Any, grid: int, base: int) -> int:
    """LLaVA-NeXT (anyres): the base image plus the largest tile grid with one newline token per row."""
    size = config.vision_config.image_size
    best = max(config.image_grid_pinpoints, key=lambda hw: hw[0] * hw[1])
    rows, cols = best[0] // size * grid, best[1] // size * grid
    return base + rows * cols + rows


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
    values.update({k: v for k, v in overrides.items() if v is not None})
    setup = TrainingSetup(**values)
    if setup.lora_target not in LORA_PRESETS:
        raise ValueError(f"lora_target={setup.lora_target!r} is not one of {', '.join(LORA_PRESETS)}.")
    if setup.dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={setup.dtype!r}: expected one of bfloat16, float16, float32.")
    return setup


# ---------------------------------------------------------------------------- parameters


def lora_targets(shape: ModelShape, setup: TrainingSetup) -> list[Matrix]:
    """The matrices that get a LoRA pair, as vlm_sft.model.apply_lora chooses them."""
    vision_ok = setup.lora_on_vision_tower
    explicit = setup.lora_target_modules
    if explicit and explicit != "all-linear":
        if isinstance(explicit, str):  # a regex, full match on module paths (PEFT's rule)
            pattern = re.compile(explicit)
            return [m for m in _adaptable(shape, vision_ok=True) if any(pattern.fullmatch(p) for p in m.paths())]
        names = set(explicit)  # names match the last path component anywhere: vision too
        return [m for m in _adaptable(shape, vision_ok=True) if m.name in names]
    preset = "all-linear" if explicit == "all-linear" else setup.lora_target
    chosen = [m for m in shape.lm_linears() if m.name in LORA_PRESETS[preset]]
    if vision_ok:
        chosen += [m for m in shape.matrices if m.component == "vision_tower" and m.name in VISION_TARGETS[preset]]
    return chosen


def _adaptable(shape: ModelShape, vision_ok: bool) -> list[Matrix]:
    comps = ("language_model", "vision_tower") if vision_ok else ("language_model",)
    return [m for m in shape.matrices if m.component in comps]


def lora_params(targets: list[Matrix], r: int) -> int:
    """A LoRA pair on a d_in x d_out matrix: A is r x d_in, B is d_out x r, so r(d_in + d_out)."""
    return sum(r * (m.d_in + m.d_out) * m.count for m in targets)


def quantized_numel(shape: ModelShape) -> int:
    return sum(m.numel - (m.d_out * m.count if m.bias else 0) for m in shape.lm_linears())


def quant_constants_bytes(shape: ModelShape, double_quant: bool, blocksize: int = 64) -> int:
    """bitsandbytes 4-bit state per weight: absmax per block, plus the nested state with double quantization."""
    total = 0
    for m in shape.lm_linears():
        blocks = math.ceil(m.d_in * m.d_out / blocksize)
        if double_quant:
            # 8-bit absmax per block; fp32 absmax per 256 blocks, a 256-entry fp32 code and an offset
            per = blocks + 4 * math.ceil(blocks / 256) + 4 * 256 + 4
        else:
            per = 4 * blocks
        total += m.count * (per + 4 * 16)  # + the 16-value NF4 code table of each weight
    return total


# ---------------------------------------------------------------------------- estimate


@dataclass
class Line:
    label: str
    bytes: int
    detail: str = ""


@dataclass
class Estimate:
    """Static lines (weights, trainable state) and activations with and without checkpointing."""

    shape: ModelShape
    setup: TrainingSetup
    static: list[Line]
    activations: dict[bool, list[Line]]  # gradient checkpointing on/off -> lines
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def total_for(self, checkpointing: bool) -> int:
        return sum(x.bytes for x in self.static) + sum(x.bytes for x in self.activations[checkpointing])

    @property
    def total(self) -> int:
        return self.total_for(self.setup.gradient_checkpointing)


def estimate(shape: ModelShape, setup: TrainingSetup) -> Estimate:
    """Peak training memory of one device, in bytes, split into the lines the report prints."""
    static, counts, notes = _static_lines(shape, setup)
    acts = {ckpt: _activation_lines(shape, setup, ckpt) for ckpt in (True, False)}
    if setup.device == "cuda":
        static.append(Line("CUDA context and workspaces", CUDA_CONTEXT_BYTES, "approximate; not in torch counters"))
    if setup.load_in_8bit:
        notes.append("8-bit (LLM.int8) is modelled for the weights only; its activations are not validated.")
    if not setup.lora_on_vision_tower and any(m.component == "vision_tower" for m in lora_targets(shape, setup)):
        notes.append(
            "lora_target_modules names also match the vision tower's layers; vlm_sft.model.apply_lora refuses "
            "that unless lora_on_vision_tower is true (use a regex scoped to model.language_model)."
        )
    if setup.train_vision_tower or setup.lora_on_vision_tower:
        notes.append("Vision-tower activations (trained or LoRA'd tower) are a rough estimate, not validated.")
    return Estimate(shape, setup, static, acts, notes, counts)


def _static_lines(shape: ModelShape, setup: TrainingSetup) -> tuple[list[Line], dict[str, int], list[str]]:
    wb = DTYPE_BYTES[setup.dtype]
    total = shape.num_params()
    lines: list[Line] = []
    notes: list[str] = []
    # ---- base weights
    if setup.quantized:
        qn = quantized_numel(shape)
        kept = total - qn
        kept_b = 4 if setup.kbit_fp32_upcast else wb
        if setup.load_in_4bit:
            lines.append(Line("base: 4-bit language-model linears", qn // 2, f"{_n(qn)} params x 0.5 byte (NF4)"))
            how = "8-bit absmax/64 + fp32 absmax/256 blocks" if setup.double_quant else "fp32 absmax per 64 values"
            lines.append(Line("base: quantization constants", quant_constants_bytes(shape, setup.double_quant), how))
        else:
            rows = sum(m.d_out * m.count for m in shape.lm_linears())
            lines.append(
                Line("base: 8-bit language-model linears", qn + 4 * rows, f"{_n(qn)} params x 1 byte + scales")
            )
        why = "fp32: prepare_model_for_kbit_training upcasts" if setup.kbit_fp32_upcast else setup.dtype
        lines.append(Line("base: kept unquantized", kept * kept_b, f"{_n(kept)} params x {kept_b} B ({why})"))
    else:
        lines.append(Line("base: all weights", total * wb, f"{_n(total)} params x {wb} B ({setup.dtype})"))
    # ---- trainable parameters, their gradients and optimizer state
    targets = lora_targets(shape, setup) if setup.use_peft else []
    lora = lora_params(targets, setup.lora_r)
    proj = shape.num_params("projector") if setup.train_projector else 0
    vision = shape.num_params("vision_tower") if setup.train_vision_tower else 0
    # PEFT upcasts LoRA to fp32 on a 16-bit base; TRL casts all trainable params to bf16 on a quantized base.
    lora_b = 2 if setup.quantized else 4
    copy_b = 2 if setup.quantized else wb
    trainable: list[tuple[int, int]] = []  # (params, bytes per param)
    if setup.use_peft:
        lines.append(
            Line(
                "trainable: LoRA",
                lora * lora_b,
                f"{_n(lora)} params in {sum(m.count for m in targets)} matrices x {lora_b} B",
            )
        )
        extra = proj + vision
        if extra:
            what = " + ".join(x for x, n in (("projector", proj), ("vision tower", vision)) if n)
            lines.append(
                Line(
                    "trainable: modules_to_save copies",
                    extra * copy_b,
                    f"{_n(extra)} params x {copy_b} B ({what}; the frozen original stays)",
                )
            )
        trainable = [(lora, lora_b), (extra, copy_b)]
    else:  # full fine-tuning: the language model and projector train in place
        full = total - shape.num_params("vision_tower") + vision
        trainable = [(full, wb)]
        notes.append("use_peft is false: full fine-tuning of the language model and projector.")
    grads = sum(n * b for n, b in trainable)
    lines.append(Line("gradients", grads, "same dtype as each trainable parameter"))
    lines.append(_optimizer_line(setup.optim, trainable))
    n_train = sum(n for n, _ in trainable)
    counts = {"total": total, "trainable": n_train, "lora": lora, "targets": sum(m.count for m in targets)}
    return lines, counts, notes


def _optimizer_line(optim: str, trainable: list[tuple[int, int]]) -> Line:
    params = sum(n for n, _ in trainable)
    if "8bit" in optim:
        return Line("optimizer state", 2 * params, f"{optim}: two 8-bit moments")
    if "32bit" in optim:
        return Line("optimizer state", 8 * params, f"{optim}: two fp32 moments")
    if optim.startswith("sgd"):
        return Line("optimizer state", 0, optim)
    dtypes = "/".join(sorted({f"{b * 8}-bit" for n, b in trainable if n}))
    return Line(
        "optimizer state",
        sum(2 * n * b for n, b in trainable),
        f"AdamW: 2 moments x {_n(params)} params, in the params' dtype ({dtypes})",
    )


def _bytes_per(setup: TrainingSetup) -> tuple[int, int, int, int]:
    """(a, c, m, lora): bytes per element of the residual stream, the autocast compute dtype, the
    language model's linear outputs, and the LoRA weights."""
    wb = DTYPE_BYTES[setup.dtype]
    # fp32 norms/embeddings after prepare_model_for_kbit_training make the residual stream fp32
    a = 4 if setup.quantized and setup.kbit_fp32_upcast else wb
    c = 2 if setup.autocast else a
    # bitsandbytes casts a 4-bit layer's output back to its input dtype; autocast leaves nn.Linear's in c
    m = a if setup.quantized else c
    lora = 2 if setup.quantized else 4
    return a, c, m, lora


def _layer_saved(shape: ModelShape, setup: TrainingSetup, targets: list[Matrix]) -> int:
    """Bytes autograd saves per token in one decoder layer (frozen base, LoRA adapters)."""
    t = shape.text
    a, c, m, lb = _bytes_per(setup)
    q = t.heads * t.head_dim
    # A padding mask disables SDPA's native GQA, so k and v are saved repeated to all heads.
    norms = 2 * (4 * t.hidden + 4)  # RMSNorm saves its fp32 input copy and rstd
    attn = c * 4 * q + 4 * t.heads  # SDPA saves q, k, v, out and an fp32 logsumexp per head
    mlp = 3 * t.intermediate * m  # gate output (SiLU), SiLU output and up output (their product)
    if not setup.use_peft:  # full fine-tuning: every linear keeps its input (q/k/v and gate/up share one)
        return norms + attn + mlp + c * (2 * t.hidden + q + t.intermediate)
    return norms + attn + mlp + _lora_saved([x for x in targets if x.component == "language_model"], setup)


def _lora_saved(targets: list[Matrix], setup: TrainingSetup) -> int:
    """Per token: dropout's mask, lora_A's autocast input, lora_B's r-dim input, per target."""
    _, c, _, lb = _bytes_per(setup)
    # CUDA's fused dropout keeps a bool mask; on CPU it multiplies by a noise tensor in the LoRA dtype
    noise = (1 if setup.device == "cuda" else lb) if setup.lora_dropout > 0 else 0
    return sum((noise + c) * x.d_in + c * setup.lora_r for x in targets if x.count)


def _vision_layer_saved(shape: ModelShape, setup: TrainingSetup, targets: list[Matrix]) -> int:
    """Per vision token, one encoder layer, when the tower gets gradients (rough: not validated)."""
    v = shape.vision
    _, c, _, _ = _bytes_per(setup)
    vb = 4 if setup.quantized and setup.kbit_fp32_upcast else DTYPE_BYTES[setup.dtype]
    inter = next(x.d_out for x in shape.matrices if x.name == "fc1")
    saved = 2 * vb * v.hidden + c * 4 * v.hidden + 2 * c * inter  # 2 LayerNorm inputs, SDPA, the activation
    if setup.train_vision_tower:
        return saved + c * (3 * v.hidden + inter)  # the linears' inputs
    per_layer = [replace(x, count=1) for x in targets if x.component == "vision_tower"]
    return saved + _lora_saved(per_layer, setup)


def _layer_backward(shape: ModelShape, setup: TrainingSetup) -> int:
    """Bytes per token alive while one decoder layer runs backward, beyond what it had saved."""
    t = shape.text
    a, c, m, _ = _bytes_per(setup)
    q = t.heads * t.head_dim
    # the MLP's three intermediate gradients, the attention's q/k/v/out gradients, and two
    # residual-stream gradients (incoming and outgoing)
    return 3 * t.intermediate * m + c * 4 * q + 2 * a * t.hidden


@dataclass(frozen=True)
class Phases:
    """Activation bytes: saved for backward, and the two transients that can set the peak on top of them."""

    saved: int  # alive at the end of the forward
    loss: int  # extra inside the LM-head loss's backward (everything saved is still alive)
    backward: int  # extra while a decoder layer runs backward (with checkpointing: recomputed first)
    tokens: int
    loss_rows: int  # positions the loss head scores
    per_layer: int  # bytes saved per token by one decoder layer without checkpointing

    @property
    def peak(self) -> int:
        return self.saved + max(self.loss, self.backward)


def activation_phases(shape: ModelShape, setup: TrainingSetup, checkpointing: bool) -> Phases:
    """What autograd keeps, per the pinned stack, at the recipe's batch and sequence length."""
    t = shape.text
    a, c, _, _ = _bytes_per(setup)
    seq = setup.seq_len(shape)
    tokens = setup.batch_size * seq
    # Rows the loss head scores: with Triton (CUDA) only labelled positions (at most the text tokens),
    # elsewhere every position but the last.
    text = seq - setup.images_per_sample * shape.image_tokens
    n_loss = setup.batch_size * (text - 1 if setup.device == "cuda" else seq - 1)
    targets = lora_targets(shape, setup) if setup.use_peft else []
    per_layer = _layer_saved(shape, setup, targets)
    # ---- saved for backward outside the decoder layers: the final RMSNorm's fp32 input; the loss
    # head's copy of the shifted hidden states, fp32 log_z and entropy, int64 labels; the projector's inputs
    loss_saved = (a * t.hidden + 16) * n_loss
    head = (4 * t.hidden + 4) * tokens + loss_saved
    image_tokens = setup.batch_size * setup.images_per_sample * shape.image_tokens
    proj = c * (shape.vision.hidden + 2 * t.hidden) * image_tokens if setup.train_projector else 0
    vision_tokens = setup.batch_size * setup.images_per_sample * shape.vision.tokens
    vision_grads = setup.train_vision_tower or any(x.component == "vision_tower" for x in targets)
    if checkpointing:
        # Each layer keeps only its input. enable_input_require_grads also hooks the vision tower's
        # embeddings, so its checkpointed layer inputs (and two LayerNorm inputs) are kept as well.
        vb = a if setup.quantized else DTYPE_BYTES[setup.dtype]
        vision = (shape.vision.layers + 2) * vb * shape.vision.hidden * vision_tokens
        saved = t.layers * a * t.hidden * tokens + head + proj + vision
    else:
        vision = (
            shape.vision.layers * _vision_layer_saved(shape, setup, targets) * vision_tokens if vision_grads else 0
        )
        saved = t.layers * per_layer * tokens + head + proj + vision
    # ---- transients: the loss head's backward, or a decoder layer's backward after the loss is done
    # (+ the fp32 gradient of the hidden states it hands back, and with checkpointing the recomputed layer)
    backward = _layer_backward(shape, setup) * tokens + 4 * t.hidden * n_loss - loss_saved
    if checkpointing:
        backward += per_layer * tokens
    if setup.load_in_4bit:
        backward += c * max(m.d_in * m.d_out for m in shape.lm_linears())  # one weight dequantized
    return Phases(saved, _loss_transient(shape, setup, n_loss), backward, tokens, n_loss, per_layer)


def _activation_lines(shape: ModelShape, setup: TrainingSetup, checkpointing: bool) -> list[Line]:
    t = shape.text
    ph = activation_phases(shape, setup, checkpointing)
    a = _bytes_per(setup)[0]
    if checkpointing:
        how = f"{t.layers} layer inputs x {ph.tokens:,} tokens x {t.hidden} x {a} B + loss head, projector"
    else:
        how = f"{t.layers} layers x {ph.tokens:,} tokens x {ph.per_layer:,} B/token + loss head, projector"
    lines = [Line("activations: saved for backward", ph.saved, how)]
    if ph.loss >= ph.backward:
        how = f"TRL's fused loss on {min(ph.loss_rows, TOKEN_CHUNK):,} rows: " + (
            "bf16 tile, fp32 temporaries (torch fallback)" if setup.device == "cpu" else "one bf16 tile (Triton)"
        )
        lines.append(Line("activations: loss-head transient", ph.loss, how))
    else:
        what = "a layer recomputed + its backward" if checkpointing else "a layer's backward"
        lines.append(Line("activations: backward transient", ph.backward, what))
    return lines


def _loss_transient(shape: ModelShape, setup: TrainingSetup, n_loss: int) -> int:
    """Peak extra bytes inside the backward of TRL's fused LM-head loss (ChunkedLogProbFunction)."""
    t = shape.text
    a, c, _, _ = _bytes_per(setup)
    rows, cols = min(n_loss, TOKEN_CHUNK), min(t.vocab, VOCAB_CHUNK)
    tile = c * rows * VOCAB_CHUNK  # allocated at full chunk width whatever the vocabulary
    if setup.device == "cpu":
        tile += CPU_LOSS_FP32_BYTES * rows * cols  # the torch fallback's fp32 temporaries; Triton works in place
    head_b = 4 if setup.quantized and setup.kbit_fp32_upcast else DTYPE_BYTES[setup.dtype]
    weight_cast = c * cols * t.hidden if head_b != c else 0  # lm_head chunk cast to the compute dtype
    hidden_cast = c * rows * t.hidden if a != c else 0
    return tile + 4 * n_loss * t.hidden + weight_cast + hidden_cast  # + the fp32 gradient of the hidden states


# ---------------------------------------------------------------------------- the lesson's formula


def lesson_formula(shape: ModelShape, setup: TrainingSetup) -> dict[str, int]:
    """The lesson's |theta|/2 + 2r|theta_target| (bytes), read two ways, beside the correct LoRA count."""
    targets = lora_targets(shape, setup)
    target_numel = sum(m.d_in * m.d_out * m.count for m in targets)
    # "intended": 2r x d per targeted d x d matrix (a square-matrix LoRA pair), at 2 bytes
    intended_lora = sum(2 * setup.lora_r * m.d_in * m.count for m in targets)
    return {
        "base": shape.num_params() // 2,
        "literal": shape.num_params() // 2 + 2 * setup.lora_r * target_numel,
        "intended": shape.num_params() // 2 + 2 * intended_lora,
        "lora_params_intended": intended_lora,
        "lora_params_exact": lora_params(targets, setup.lora_r),
    }


# ---------------------------------------------------------------------------- report


def _n(x: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return str(x)


def _gib(x: int) -> str:
    return f"{x / GiB:7.2f}"


def format_report(est: Estimate, name: str, recipe: str | None = None) -> str:
    """The printed breakdown: parameters, memory per part (GiB), totals with and without checkpointing."""
    shape, setup = est.shape, est.setup
    seq = setup.seq_len(shape)
    img = setup.images_per_sample * shape.image_tokens
    quant = (
        ("4-bit NF4" + (" + double quant" if setup.double_quant else ""))
        if setup.load_in_4bit
        else ("8-bit" if setup.load_in_8bit else setup.dtype)
    )
    targets = lora_targets(shape, setup)
    kinds = ",".join(sorted({m.name for m in targets})) or "none"
    out = [
        f"Memory estimate: {name} ({shape.description}), device {setup.device}",
        f"  recipe: {recipe or '(none: TRL defaults, LoRA on)'}",
        f"  base {quant}; LoRA r={setup.lora_r} on {kinds}; projector "
        f"{'trained fully' if setup.train_projector else 'frozen'}; optimizer {setup.optim}",
        f"  batch {setup.batch_size} x {seq:,} tokens ({img} image + {seq - img:,} text"
        f"{', max_length' if setup.max_length is not None else ''})",
        "",
        "Parameters",
    ]
    for comp, label in (
        ("vision_tower", "vision tower"),
        ("projector", "projector"),
        ("language_model", "language model"),
        ("lm_head", "lm_head"),
    ):
        out.append(f"  {label:<38}{_n(shape.num_params(comp)):>10}")
    out.append(f"  {'total':<38}{_n(est.counts['total']):>10}")
    pct = 100 * est.counts["trainable"] / est.counts["total"]
    out.append(f"  {'trainable (LoRA + copies)':<38}{_n(est.counts['trainable']):>10}  {pct:.2f}%")
    out += ["", f"Memory (GiB){'':<30}{'':>7}  how"]
    for line in est.static:
        out.append(f"  {line.label:<40}{_gib(line.bytes)}  {line.detail}")
    for ckpt in (True, False):
        mark = " <- recipe" if ckpt == setup.gradient_checkpointing else ""
        out.append(f"  -- gradient checkpointing {'on' if ckpt else 'off'}{mark}")
        for line in est.activations[ckpt]:
            out.append(f"  {line.label:<40}{_gib(line.bytes)}  {line.detail}")
        out.append(f"  {'total':<40}{_gib(est.total_for(ckpt))}")
    out += ["", *_lesson_lines(est)]
    out += [f"note: {n}" for n in est.notes]
    return "\n".join(out)


def _lesson_lines(est: Estimate) -> list[str]:
    f = lesson_formula(est.shape, est.setup)
    exact = f["lora_params_exact"]
    return [
        "The lesson's formula |theta|/2 + 2r|theta_target|:",
        f"  |theta|/2 = {f['base'] / GiB:.2f} GiB counts all {_n(est.counts['total'])} params as 4-bit; only the "
        f"language model's linears ({_n(quantized_numel(est.shape))}) are: the vision tower, projector, embeddings "
        "and lm_head stay 16-bit (32-bit after prepare_model_for_kbit_training), and the quantization constants "
        "are missing.",
        f"  2r|theta_target| read literally (2r x every targeted weight) is {(f['literal'] - f['base']) / GiB:,.1f} "
        f"GiB; read as 2r*d params per targeted d x d matrix it gives {_n(f['lora_params_intended'])}. A LoRA pair "
        f"on a d_in x d_out matrix has r(d_in + d_out) params (the same only when square): {_n(exact)} here, "
        f"{2 * exact / GiB:.2f} GiB at 16-bit.",
        "  It also leaves out the projector trained fully, gradients, optimizer moments and the activations: "
        f"estimate {est.total / GiB:.2f} GiB vs the formula's {f['intended'] / GiB:.2f} GiB.",
    ]
