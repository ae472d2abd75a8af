"""The values each section of a model card shows, one function per section (vlm_sft.hub.model_card renders them).

Tables come back as rows of ready cells (`table_cell`: short floats, code-quoted lists, `|` escaped) so the
Jinja templates in templates/ only lay them out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlm_sft.evaluation.report import format_table

logger = logging.getLogger(__name__)


def run_losses(state: dict | None) -> dict[str, Any]:
    """Final training loss (last logged), mean training loss, final eval loss, steps, epochs, runtime."""
    if not state:
        return {}
    history = state.get("log_history", [])
    out: dict[str, Any] = {"global_step": state.get("global_step"), "epoch": state.get("epoch")}
    for key, name in (("loss", "final_train_loss"), ("eval_loss", "final_eval_loss")):
        entry = next((e for e in reversed(history) if key in e), None)
        if entry is not None:
            out[name] = entry[key]
            out[name + "_step"] = entry.get("step")
    for key in ("train_loss", "train_runtime"):
        entry = next((e for e in reversed(history) if key in e), None)
        if entry is not None:
            out[key] = entry[key]
    return out


def table_cell(value: Any) -> str:
    """A markdown table cell: short floats, code-quoted lists, and `|` escaped (LoRA target regexes hold some)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(f"`{v}`" for v in value)
    else:
        text = "" if value is None else str(value)
    return text.replace("|", "\\|")


def flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as `a.b.c` keys; list items named by their "name" (per-example lists are skipped)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten_numbers(value, f"{prefix}{key}."))
    elif isinstance(obj, list) and all(isinstance(v, dict) and "name" in v for v in obj):
        for item in obj:
            out.update(flatten_numbers({k: v for k, v in item.items() if k != "name"}, f"{prefix}{item['name']}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = obj
    return out


def eval_section(report: dict, max_rows: int = 40) -> str:
    """The eval report's side-by-side table (vlm_sft.evaluation.report), or its numbers when it has another shape."""
    head = ""
    if isinstance(report.get("n"), int):
        eval_file = Path(str(report.get("eval_file") or "")).name
        head = f"Generated answers on {report['n']} held-out examples{f' (`{eval_file}`)' if eval_file else ''}:\n\n"
    if isinstance(report.get("models"), list):
        try:
            return head + format_table(report)
        except (KeyError, TypeError, IndexError) as err:  # another version's report: its numbers, not a failed card
            logger.warning("eval_report.json is not in this version's shape (%r): the card lists its numbers.", err)
    numbers = {k: v for k, v in flatten_numbers(report).items() if not k.startswith(("examples", "worst"))}
    if not numbers:
        return "See `eval_report.json`."
    shown = list(numbers.items())[:max_rows]
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {table_cell(v)} |" for k, v in shown)]
    if len(numbers) > max_rows:
        lines.append(f"\n{len(numbers) - max_rows} more values in `eval_report.json`.")
    return head + "\n".join(lines)


def lora_rows(adapter_config: dict, summary: dict, params: dict | None) -> list[tuple[str, str]]:
    """(setting, table cell) for the LoRA table: what the adapter holds and what was trained or frozen."""
    lora = summary.get("lora") or {}
    targets = adapter_config.get("target_modules")
    target_text = f"`{targets}`" if isinstance(targets, str) else table_cell(sorted(targets or []))
    comps = (params or {}).get("components", {})
    names = sorted((params or {}).get("lora_targets", {}))
    vision = comps.get("vision_tower", {})
    projector = comps.get("projector", {})
    if lora.get("on_vision_tower") or lora.get("train_vision_tower"):
        vision_text = "LoRA" if lora.get("on_vision_tower") else "trained fully"
    elif vision:
        vision_text = "frozen" if not vision.get("trainable") else f"{vision['percent']}% trainable"
    else:
        vision_text = "frozen" if lora else "see adapter_config.json"
    if projector:
        projector_text = (
            f"trained fully ({projector['trainable']:,} parameters)"
            if projector.get("percent") == 100.0
            else ("frozen" if not projector.get("trainable") else f"{projector['percent']}% trainable")
        )
    else:
        projector_text = "trained fully" if adapter_config.get("modules_to_save") else "frozen"
    scope = "language model only" if not lora.get("on_vision_tower") else "language model and vision tower"
    if lora.get("preset"):
        scope += f" (`lora_target: {lora['preset']}`)"
    rows = [
        ("r", adapter_config.get("r")),
        ("lora_alpha", adapter_config.get("lora_alpha")),
        ("lora_dropout", adapter_config.get("lora_dropout")),
        ("target modules", target_text),
        ("LoRA layers", table_cell(names) if names else None),
        ("scope", scope),
        ("vision tower", vision_text),
        ("projector", projector_text),
        ("modules saved in full", table_cell(adapter_config.get("modules_to_save"))),
        ("DoRA / rsLoRA", f"{bool(adapter_config.get('use_dora'))} / {bool(adapter_config.get('use_rslora'))}"),
    ]
    return [(k, table_cell(v)) for k, v in rows if v not in (None, "")]


def quantization_text(summary: dict) -> str:
    quant = summary.get("quantization")
    if not summary:
        return "Not recorded (no `training_summary.json` in the run's folder)."
    if not quant:
        precision = summary.get("hyperparameters", {}).get("precision")
        return f"None (LoRA): the frozen base model was loaded in {precision}."
    kept = ", ".join(quant.get("kept_in_16bit", []))
    return (
        f"QLoRA: base model loaded in {quant['bits']}-bit ({quant['quant_type']}, double quantization "
        f"{'on' if quant.get('double_quant') else 'off'}, compute dtype {quant.get('compute_dtype')}); {kept} kept in "
        "16-bit. Merge this adapter into a 16-bit base (`vlm-sft merge`), never into a 4-bit one."
    )


def parameter_rows(params: dict | None) -> list[list[str]]:
    """Cells of the trainable-parameters table: one row per component, then the bold total."""
    if not params:
        return []
    rows = [
        [name, f"{row['trainable']:,}", f"{row['total']:,}", f"{row['percent']:.3f}"]
        for name, row in params["components"].items()
    ]
    total = [f"**{params['trainable']:,}**", f"**{params['total']:,}**", f"**{params['percent']:.3f}**"]
    return [*rows, ["**all**", *total]]


def result_rows(losses: dict) -> list[tuple[str, str]]:
    """(quantity, table cell) for the results table; empty without a training log."""
    rows = [
        ("steps", losses.get("global_step")),
        ("epochs", losses.get("epoch")),
        (f"final training loss (step {losses.get('final_train_loss_step')})", losses.get("final_train_loss")),
        ("mean training loss over the run", losses.get("train_loss")),
        (f"final eval loss (step {losses.get('final_eval_loss_step')})", losses.get("final_eval_loss")),
        ("training time (s)", losses.get("train_runtime")),
    ]
    return [(k, table_cell(v)) for k, v in rows if v is not None]
