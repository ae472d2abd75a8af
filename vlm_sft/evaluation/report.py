"""The evaluation report: the side-by-side table and eval_report.json / .md / .png (`vlm_sft.evaluation.generate`).

Formatting only (no model, no Hub), so the model card can show an eval report without importing the evaluator.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_sft.evaluation.metrics import HEADLINE, headline_value

REPORT_FILES = ("eval_report.json", "eval_report.md", "eval_report.png")


def _fmt(value: float | None, label: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if "MAE" in label else f"{value:.3f}"


def table_rows(report: dict) -> list[tuple[str, list[float | None]]]:
    """(metric label, one value per model) for every headline metric some model has, then per JSON field."""
    summaries = [m["metrics"] for m in report["models"]]
    rows = []
    for label, path, _ in HEADLINE:
        values = [headline_value(s, path) for s in summaries]
        if any(v is not None for v in values):
            rows.append((label, values))
    fields = sorted({k for s in summaries if s["json"] for k in s["json"]["per_field"]})
    for key in fields:
        rows.append((f"JSON field `{key}`", [(s["json"] or {}).get("per_field", {}).get(key) for s in summaries]))
    return rows


def format_table(report: dict) -> str:
    """Markdown table: one row per metric, base and each adapter side by side, with each adapter's change."""
    models = report["models"]
    has_base = models[0]["kind"] == "base"
    header = ["metric"]
    for i, m in enumerate(models):
        header.append(f"{m['name']}")
        if has_base and i > 0:
            header.append("Δ vs base")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for label, values in table_rows(report):
        cells = [label]
        for i, v in enumerate(values):
            cells.append(_fmt(v, label))
            if has_base and i > 0:
                base_v = values[0]
                cells.append("-" if v is None or base_v is None else f"{v - base_v:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: str, limit: int = 120) -> str:
    """A table cell: one line, pipes escaped, long answers cut (the JSON report has them in full)."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_markdown(report: dict) -> str:
    """eval_report.md: what was evaluated, the side-by-side table, then each adapter's worst examples."""
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report["models"][0]["metrics"]["kinds"].items()))
    gen = report["generation"]
    decoding = "greedy" if not gen["do_sample"] else f"sampling (T={gen['temperature']}, top_p={gen['top_p']})"
    lines = [
        "# Evaluation report",
        "",
        f"- eval set: `{report['eval_file']}` ({report['n']} examples: {kinds})",
        f"- base model: `{report['base_model']}`"
        + (f" @ {report['base_revision']}" if report["base_revision"] else ""),
        f"- generation: {decoding}, max_new_tokens={gen['max_new_tokens']}, batch size {gen['batch_size']}",
    ]
    for m in report["models"]:
        if m["kind"] == "adapter":
            rev = f" @ {m['revision']}" if m["revision"] else ""
            lines.append(f"- adapter `{m['name']}`: `{m['path']}`{rev}")
    lines += ["", format_table(report), ""]
    by_index = {e["index"]: e for e in report["examples"]}
    for name, indices in report["worst"].items():
        has_base = "base" in by_index[indices[0]]["answers"] if indices else False
        lines += [f"## Worst examples: {name}", ""]
        header = ["#", "image", "question", "reference"] + (["base"] if has_base else []) + [name, "score"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        for i in indices:
            e = by_index[i]
            cells = [str(i), ", ".join(e["images"]) or "-", _cell(e["question"], 60), _cell(e["reference"])]
            cells += [_cell(e["answers"]["base"])] if has_base else []
            cells += [_cell(e["answers"][name]), f"{e['scores'][name]['score']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write eval_report.json, eval_report.md and eval_report.png into out_dir; returns their paths."""
    from vlm_sft.evaluation.plots import plot_eval_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name.rsplit(".", 1)[1]: out / name for name in REPORT_FILES}
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    paths["md"].write_text(format_markdown(report))
    plot_eval_report(report, paths["png"])
    return paths
