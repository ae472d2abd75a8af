"""The printed breakdown of an estimate: parameters, memory per part, totals, and the lesson's formula beside it."""

from __future__ import annotations

from vlm_sft.modeling.memory.recipe import GiB
from vlm_sft.modeling.memory.terms import Estimate, lesson_formula, lora_targets, quantized_numel
from vlm_sft.modeling.memory.terms import count_str as _n

# ---------------------------------------------------------------------------- report


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
