"""What is trained: trainable and total parameters per component and per LoRA target."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the model module stay unimported for `adapter_size_mb` (model cards, push)
    import torch

    from vlm_sft.modeling.setup import Components

_PEFT_PREFIX = re.compile(r"^base_model\.model\.")
# PEFT keeps the original module beside the trained copy of a `modules_to_save` module.
_SAVED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.")
_ORIGINAL = re.compile(r"\.original_module\.")
_LORA = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.")


def _numel(param: torch.Tensor) -> int:
    """Logical parameter count; bitsandbytes 4-bit weights are stored packed two per byte."""
    import torch

    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def _component(name: str, parts: Components) -> str:
    # Most specific first: Qwen's projector lives inside its vision module.
    for label, path in (
        *(("projector", p) for p in parts.projectors),
        ("vision_tower", parts.vision_tower),
        ("language_model", parts.language_model),
        ("lm_head", parts.lm_head),
    ):
        if name == path or name.startswith(path + "."):
            return label
    return "other"


def trainable_parameters(model: torch.nn.Module, parts: Components) -> dict:
    """Per component: trainable, total (base parameters) and percent; per LoRA target: parameters.

    The overall `trainable`, `total` and `percent` follow PEFT's convention (`get_nb_trainable_parameters`):
    `total` counts the LoRA weights and trained copies too, `base_total` only the base model's.
    """
    trainable: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    lora_targets: dict[str, int] = defaultdict(int)
    for raw_name, param in model.named_parameters():
        name = _PEFT_PREFIX.sub("", raw_name)
        plain = _LORA.split(_SAVED_COPY.sub(".", _ORIGINAL.sub(".", name)))[0]
        component = _component(plain, parts)
        is_adapter = bool(_LORA.search(name) or _SAVED_COPY.search(name))
        if not is_adapter:
            total[component] += _numel(param)
        if param.requires_grad:
            trainable[component] += _numel(param)
        if _LORA.search(name):
            lora_targets[plain.rsplit(".", 1)[-1] if "." in plain else plain] += param.numel()
    order = ["vision_tower", "projector", "language_model", "lm_head", "other"]
    comps = {
        c: {
            "trainable": trainable[c],
            "total": total[c],
            "percent": round(100 * trainable[c] / total[c], 4) if total[c] else 0.0,
        }
        for c in order
        if total[c] or trainable[c]
    }
    all_trainable, all_total = _peft_counts(model)
    return {
        "components": comps,
        "lora_targets": dict(sorted(lora_targets.items())),
        "trainable": all_trainable,
        "total": all_total,  # PEFT's "all params": the base plus the adapter's own parameters
        "base_total": sum(total.values()),  # the components' totals: base parameters only
        "percent": round(100 * all_trainable / all_total, 4),
    }


def _peft_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) as PEFT reports them (`print_trainable_parameters`): the adapter counts in "all", so the
    percent shown is the one users compare with PEFT's own log line."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(_numel(p) for p in params if p.requires_grad), sum(_numel(p) for p in params)


def format_table(report: dict) -> str:
    """The report as a fixed-width table for the training log."""
    lines = [f"{'component':<16}{'trainable':>14}{'total':>16}{'%':>10}"]
    for name, row in report["components"].items():
        lines.append(f"{name:<16}{row['trainable']:>14,}{row['total']:>16,}{row['percent']:>10.3f}")
    lines.append(f"{'all':<16}{report['trainable']:>14,}{report['total']:>16,}{report['percent']:>10.3f}")
    for target, n in report["lora_targets"].items():
        lines.append(f"  LoRA on {target:<24}{n:>14,}")
    return "\n".join(lines)


def write_report(report: dict, output_dir: str | Path) -> Path:
    path = Path(output_dir) / "trainable_parameters.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def adapter_size_mb(output_dir: str | Path) -> float:
    """Size of the saved adapter weights in MB."""
    files = list(Path(output_dir).glob("adapter_model*.safetensors"))
    return sum(f.stat().st_size for f in files) / 1e6
