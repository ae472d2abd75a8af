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

from vlm_sft.modeling.lora import VISION_TARGETS
from vlm_sft.modeling.memory.recipe import DTYPE_BYTES, LORA_PRESETS, GiB, TrainingSetup
from vlm_sft.modeling.memory.shapes import Matrix, ModelShape

# TRL's fused LM-head loss (trl/kernels/chunked_logprob.py) scores tokens in tiles of at most
# TOKEN_CHUNK x VOCAB_CHUNK logits.
TOKEN_CHUNK, VOCAB_CHUNK = 4096, 32768
# fp32 temporaries per logit at the loss's peak with the torch fallback (no Triton, e.g. CPU), read off
# `_backward_tile` and confirmed with the profiler: y, z, log_p, p, grad (4 B each), is_target (1 B),
# is_target.float() and (is_target.float() - p) (4 B each) = 29 B; the forward's `_forward_tile` peaks at 13.
CPU_LOSS_FP32_BYTES = 29
CUDA_CONTEXT_BYTES = GiB // 2  # CUDA context, cuBLAS workspace: outside PyTorch's counters (approximate)

# ---------------------------------------------------------------------------- parameters


def count_str(x: int) -> str:
    """A parameter count as 7.06B, 16.78M, 3.1K."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return str(x)


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
    if shape.parts is not None:  # the very regex apply_lora gives PEFT, so the two cannot disagree
        from vlm_sft.modeling.setup import lora_target_regex

        pattern = re.compile(lora_target_regex(shape.parts, preset, vision_ok))
        return [m for m in _adaptable(shape, vision_ok) if any(pattern.fullmatch(p) for p in m.paths())]
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
            lines.append(
                Line("base: 4-bit language-model linears", qn // 2, f"{count_str(qn)} params x 0.5 byte (NF4)")
            )
            how = "8-bit absmax/64 + fp32 absmax/256 blocks" if setup.double_quant else "fp32 absmax per 64 values"
            lines.append(Line("base: quantization constants", quant_constants_bytes(shape, setup.double_quant), how))
        else:
            rows = sum(m.d_out * m.count for m in shape.lm_linears())
            lines.append(
                Line("base: 8-bit language-model linears", qn + 4 * rows, f"{count_str(qn)} params x 1 byte + scales")
            )
        why = "fp32: prepare_model_for_kbit_training upcasts" if setup.kbit_fp32_upcast else setup.dtype
        lines.append(Line("base: kept unquantized", kept * kept_b, f"{count_str(kept)} params x {kept_b} B ({why})"))
    else:
        lines.append(Line("base: all weights", total * wb, f"{count_str(total)} params x {wb} B ({setup.dtype})"))
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
                f"{count_str(lora)} params in {sum(m.count for m in targets)} matrices x {lora_b} B",
            )
        )
        extra = proj + vision
        if extra:
            what = " + ".join(x for x, n in (("projector", proj), ("vision tower", vision)) if n)
            lines.append(
                Line(
                    "trainable: modules_to_save copies",
                    extra * copy_b,
                    f"{count_str(extra)} params x {copy_b} B ({what}; the frozen original stays)",
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
        f"AdamW: 2 moments x {count_str(params)} params, in the params' dtype ({dtypes})",
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


def compute_dtype(setup: TrainingSetup) -> str:
    """The dtype matmuls run in (and the loss tile is allocated in): autocast's, else the weights' own."""
    c = _bytes_per(setup)[1]
    if c == 4:
        return "fp32"
    if setup.autocast:
        return "fp16" if setup.fp16 else "bf16"
    return {"float16": "fp16", "half": "fp16"}.get(setup.dtype, "bf16")


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
    inter = v.intermediate
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
        # Each layer keeps only its input. enable_input_require_grads also hooks the vision tower's embeddings;
        # on a frozen tower training drops that hook (FrozenVisionTowerCallback), so the tower keeps nothing.
        vb = a if setup.quantized else DTYPE_BYTES[setup.dtype]
        vision = (shape.vision.layers + 2) * vb * shape.vision.hidden * vision_tokens if vision_grads else 0
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
        tile = compute_dtype(setup)
        how = f"TRL's fused loss on {min(ph.loss_rows, TOKEN_CHUNK):,} rows: " + (
            f"one {tile} tile, fp32 temporaries (torch fallback)"
            if setup.device == "cpu"
            else f"one {tile} tile (Triton)"
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
