"""The evaluation report: intervals, worst examples, the side-by-side table and eval_report.json / .md / .png.

The report says how it scored: the scoring rules and numeric tolerance, the generation settings and seed,
the system prompt, and a 95 % bootstrap interval (`vlm_sft.evaluation.intervals`) on every metric and on
every difference to the base model. "Worst examples" lists only examples that lost points.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_sft.evaluation.intervals import LEVEL, RESAMPLES, SEED, bootstrap_difference, bootstrap_interval
from vlm_sft.evaluation.metrics import HEADLINE, headline_value

REPORT_FILES = ("eval_report.json", "eval_report.md", "eval_report.png")
Values = tuple[list[float | None], list[float]]


# ---------------------------------------------------------------------------------------------- per example


def per_example_values(label: str, scores: list[dict]) -> Values:
    """(value, weight) per example whose weighted mean is the headline metric `label` (`metrics.aggregate`)."""
    ones = [1.0] * len(scores)
    if label == "exact match":
        return [float(s["exact_match"]) for s in scores], ones
    if label == "token F1":
        return [s["token_f1"] for s in scores], ones
    if label == "JSON valid":
        return [float(s["json_valid"]) if s["kind"] == "json" else None for s in scores], ones
    if label == "JSON field accuracy":  # fields matched / fields, over all JSON examples
        fields = [s["fields"] if s["kind"] == "json" and s["fields"] else None for s in scores]
        return [sum(f.values()) / len(f) if f else None for f in fields], [len(f) if f else 0.0 for f in fields]
    if label == "numeric accuracy":
        return [float(s["numeric_correct"]) if s["kind"] == "numeric" else None for s in scores], ones
    if label == "numeric MAE":
        return [s["abs_error"] if s["kind"] == "numeric" else None for s in scores], ones
    if label == "numeric parsed":
        return [float(s["abs_error"] is not None) if s["kind"] == "numeric" else None for s in scores], ones
    if label.startswith("JSON field `"):
        key = label[len("JSON field `") : -1]
        return [float(s["fields"][key]) if s["kind"] == "json" and key in s["fields"] else None for s in scores], ones
    raise ValueError(f"no per-example values for {label!r}")


def add_intervals(report: dict) -> dict:
    """Store `intervals` (per model and metric) and `difference_intervals` (adapter minus base) in the report."""
    names = [m["name"] for m in report["models"]]
    per_model = {name: [e["scores"][name] for e in report["examples"]] for name in names}
    has_base = report["models"][0]["kind"] == "base"
    for m in report["models"]:
        m["intervals"], m["difference_intervals"] = {}, {}
        for label, _ in table_rows(report):
            values, weights = per_example_values(label, per_model[m["name"]])
            m["intervals"][label] = bootstrap_interval(values, weights)
            if has_base and m["kind"] == "adapter":
                base_values, base_weights = per_example_values(label, per_model[names[0]])
                m["difference_intervals"][label] = bootstrap_difference(values, base_values, weights, base_weights)
    report["intervals"] = {"level": LEVEL, "resamples": RESAMPLES, "seed": SEED, "method": "percentile bootstrap"}
    return report


def worst_examples(examples: list[dict], name: str, k: int) -> list[int]:
    """Indices of at most k examples on which `name` lost points, lowest score first; among equals, those where
    it fell furthest below base. An example scored 1.0 (right, or within the numeric tolerance) is never listed."""

    def key(e: dict) -> tuple[float, float, int]:
        own = e["scores"][name]["score"]
        base = e["scores"]["base"]["score"] if "base" in e["scores"] else own
        return own, own - base, e["index"]

    lost = [e for e in examples if e["scores"][name]["score"] < 1.0]
    return [e["index"] for e in sorted(lost, key=key)[:k]]


# ---------------------------------------------------------------------------------------------- table


def _fmt(value: float | None, label: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if "MAE" in label else f"{value:.3f}"


def _interval(bounds: list[float] | tuple[float, float] | None, label: str, signed: bool = False) -> str:
    if not bounds:
        return ""
    digits = 2 if "MAE" in label else 3
    sign = "+" if signed else ""
    return f" [{bounds[0]:{sign}.{digits}f}, {bounds[1]:{sign}.{digits}f}]"


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
    """Markdown table: one row per metric, base and each adapter side by side, with each adapter's change;
    each number followed by its 95 % interval when the report has them (`add_intervals`)."""
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
        for i, (v, m) in enumerate(zip(values, models, strict=True)):
            cells.append(_fmt(v, label) + ("" if v is None else _interval(m.get("intervals", {}).get(label), label)))
            if has_base and i > 0:
                base_v = values[0]
                delta = "-" if v is None or base_v is None else f"{v - base_v:+.3f}"
                if delta != "-":
                    delta += _interval(m.get("difference_intervals", {}).get(label), label, signed=True)
                cells.append(delta)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- markdown


def _cell(text: str, limit: int = 120) -> str:
    """A table cell: one line, pipes escaped, long answers cut (the JSON report has them in full)."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def settings_lines(report: dict) -> list[str]:
    """How it scored: rules and tolerance, generation settings and seed, system prompt, intervals, notes."""
    gen = report["generation"]
    decoding = "greedy" if not gen["do_sample"] else f"sampling (T={gen['temperature']}, top_p={gen['top_p']})"
    tolerance = report["numeric_tolerance"]
    lines = [
        f"- generation: {decoding}, max_new_tokens={gen['max_new_tokens']}, batch size {gen['batch_size']}, "
        f"seed {gen['seed']}" + ("" if gen["do_sample"] else " (greedy: the seed does not change answers)"),
        "- system prompt: " + (f"`{_cell(report['system_prompt'])}`" if report.get("system_prompt") else "none"),
        "- scoring: exact match and token F1 after normalisation (case, whitespace, sentence punctuation at the "
        "end); numeric answers right when the first number "
        + (f"is within ±{tolerance:g} (absolute) of" if tolerance else "equals")
        + " the reference's, in the same unit; JSON answers must be an object, fields compared by value at "
        "every depth (`false` is not `0`); an example's score is its kind's headline (F1 for text)",
    ]
    iv = report.get("intervals")
    if iv:
        lines.append(
            f"- intervals: {iv['level']:.0%} {iv['method']} over the {report['n']} examples "
            f"({iv['resamples']} resamples, seed {iv['seed']})"
            + ("; Δ intervals resample base and adapter together" if report["models"][0]["kind"] == "base" else "")
        )
    if report.get("eval_set_note"):
        lines.append(f"- note: {report['eval_set_note']}")
    return lines


def _worst_section(report: dict, name: str, indices: list[int], by_index: dict[int, dict]) -> list[str]:
    has_base = any(m["kind"] == "base" for m in report["models"])
    lines = [f"## Worst examples: {name}", ""]
    if not indices:
        return lines + ["No example lost points.", ""]
    lines += ["Examples that lost points, lowest score first.", ""]
    header = ["#", "image", "question", "reference"] + (["base"] if has_base else []) + [name, "score"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for i in indices:
        e = by_index[i]
        cells = [str(i), ", ".join(e["images"]) or "-", _cell(e["question"], 60), _cell(e["reference"])]
        cells += [_cell(e["answers"]["base"])] if has_base else []
        cells += [_cell(e["answers"][name]), f"{e['scores'][name]['score']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def format_markdown(report: dict) -> str:
    """eval_report.md: what was evaluated and how it scored, the table, then each adapter's worst examples."""
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report["models"][0]["metrics"]["kinds"].items()))
    lines = [
        "# Evaluation report",
        "",
        f"- eval set: `{report['eval_file']}` ({report['n']} examples: {kinds})",
        f"- base model: `{report['base_model']}`"
        + (f" @ {report['base_revision']}" if report["base_revision"] else ""),
    ]
    for m in report["models"]:
        if m["kind"] == "adapter":
            rev = f" @ {m['revision']}" if m["revision"] else ""
            lines.append(f"- adapter `{m['name']}`: `{m['path']}`{rev}")
    lines += settings_lines(report)
    lines += ["", format_table(report), ""]
    by_index = {e["index"]: e for e in report["examples"]}
    for name, indices in report["worst"].items():
        lines += _worst_section(report, name, indices, by_index)
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
