"""Pictures of a run: loss.png (training curves), eval_report.png (base vs adapters), sweep.png (LoRA sweep).

Figures are drawn on matplotlib's Agg canvas directly, never through pyplot: no display is needed, no
global figure state is shared with the trainer, and nothing changes the user's matplotlib backend.
Each function returns the numbers it drew, so tests can check that a picture shows what its report says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlm_sft.evaluation.metrics import FLAT_NAMES, HEADLINE, LOWER_IS_BETTER, headline_value

logger = logging.getLogger(__name__)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _log_y(ax: Any) -> None:
    """A log loss axis labelled 0.5, 1, 2 rather than 5x10^-1: early losses are 10x the late ones."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def loss_curves(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of the training loss and, when the run evaluated, the eval loss."""
    curves = {
        "train": [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e],
        "eval": [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e],
    }
    return {k: v for k, v in curves.items() if v}


def score_curves(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of each 0..1 generation score logged during training (`eval_generate`)."""
    curves = {}
    for name in FLAT_NAMES.values():
        if name in LOWER_IS_BETTER:  # MAE is not on the 0..1 scale of the panel
            continue
        points = [(e["step"], e[f"eval_{name}"]) for e in log_history if f"eval_{name}" in e and "step" in e]
        if points:
            curves[f"eval_{name}"] = points
    return curves


def plot_loss(log_history: list[dict], path: str | Path, title: str | None = None) -> dict[str, list]:
    """loss.png: training loss (and eval loss when there is an eval set) against optimizer steps; when the run
    scored answers by generation (`eval_generate`), a second panel with those scores against the same steps."""
    curves = loss_curves(log_history)
    scores = score_curves(log_history)
    fig = _figure(6.4, 6.6 if scores else 4.0)
    ax = fig.add_subplot(2, 1, 1) if scores else fig.add_subplot()
    styles = {"train": {"color": "tab:blue", "label": "training loss"}}
    styles["eval"] = {"color": "tab:orange", "label": "eval loss", "marker": "o"}
    for name, points in curves.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, **styles[name])
    if not curves:
        ax.text(0.5, 0.5, "no loss was logged (fewer steps than logging_steps?)", ha="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="loss", title=title or "training curve")
    if curves and all(v > 0 for points in curves.values() for _, v in points):
        _log_y(ax)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    if scores:
        ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
        for name, points in scores.items():
            steps, values = zip(*points, strict=True)
            ax2.plot(steps, values, marker="o", label=name.removeprefix("eval_").replace("_", " "))
        ax2.set(xlabel="step", ylabel="score (higher is better)", ylim=(-0.02, 1.02))
        ax2.set_title("answers scored by generation")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    _save(fig, path)
    return {**curves, **scores}


def write_loss_plot(trainer: Any, output_dir: str | Path) -> Path | None:
    """loss.png in output_dir from the trainer's log, on the main process only.

    A failed picture must not fail a finished training run (the adapter is saved by now): it is logged.
    """
    if not trainer.is_world_process_zero():
        return None
    path = Path(output_dir) / "loss.png"
    try:
        plot_loss(trainer.state.log_history, path, title=f"training curve: {Path(output_dir).name}")
    except Exception as err:  # any plotting failure: see the docstring
        logger.warning("Could not write %s: %s", path, err)
        return None
    return path


def eval_bars(report: dict) -> dict[str, dict[str, float]]:
    """{metric label: {model name: value}} for the bar chart: the 0..1 headline metrics some model has."""
    bars: dict[str, dict[str, float]] = {}
    for label, path, higher_is_better in HEADLINE:
        if not higher_is_better:  # MAE is not on a 0..1 scale; it gets its own panel
            continue
        values = {m["name"]: headline_value(m["metrics"], path) for m in report["models"]}
        if any(v is not None for v in values.values()):
            bars[label] = {k: v for k, v in values.items() if v is not None}
    return bars


def plot_eval_report(report: dict, path: str | Path) -> dict[str, dict[str, float]]:
    """eval_report.png: grouped bars, one group per metric and one bar per model; MAE in a second panel."""
    import numpy as np

    bars = eval_bars(report)
    names = [m["name"] for m in report["models"]]
    mae = {m["name"]: headline_value(m["metrics"], ("numeric", "mae")) for m in report["models"]}
    has_mae = any(v is not None for v in mae.values())
    fig = _figure(max(6.0, 1.6 * len(bars) + 2) + (2.5 if has_mae else 0), 4.2)
    grid = fig.add_gridspec(1, 2, width_ratios=[max(len(bars), 1), 1.2]) if has_mae else fig.add_gridspec(1, 1)
    ax = fig.add_subplot(grid[0])
    x, width = np.arange(len(bars)), 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        values = [bars[label].get(name, np.nan) for label in bars]
        drawn = ax.bar(x + (j - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, list(bars), rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.1), ylabel="score (higher is better)", title=f"{report['n']} held-out examples")
    ax.legend(fontsize=8)
    if has_mae:
        ax2 = fig.add_subplot(grid[1])
        shown = [n for n in names if mae[n] is not None]
        drawn = ax2.bar(range(len(shown)), [mae[n] for n in shown], color=[f"C{names.index(n)}" for n in shown])
        ax2.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
        ax2.set_xticks(range(len(shown)), shown, rotation=20, ha="right", fontsize=8)
        ax2.set(ylabel="mean absolute error (lower is better)", title="numeric MAE")
        bars = {**bars, "numeric MAE": {n: mae[n] for n in shown}}
    _save(fig, path)
    return bars


def plot_sweep(runs: list[dict], path: str | Path, threshold: float | None = None) -> dict[str, list]:
    """sweep.png: training loss against step, one line per configuration (colour = rank, dash = targets)."""
    fig = _figure(7.2, 4.6)
    ax = fig.add_subplot()
    ranks = sorted({r["params"].get("lora_r") for r in runs if r["params"].get("lora_r") is not None})
    targets = sorted({str(r["params"].get("lora_target")) for r in runs})
    dashes = ["-", "--", ":", "-."]
    drawn = {}
    for i, run in enumerate(runs):
        points = run["loss_curve"]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        r = run["params"].get("lora_r")
        color = f"C{ranks.index(r)}" if r in ranks else f"C{i}"
        style = dashes[targets.index(str(run["params"].get("lora_target"))) % len(dashes)]
        ax.plot(steps, values, style, color=color, label=run["name"], linewidth=1.4)
        drawn[run["name"]] = list(points)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=(0, (4, 4)), label=f"threshold {threshold:g}")
    if drawn and all(v > 0 for points in drawn.values() for _, v in points):
        _log_y(ax)
    ax.set(xlabel="step", ylabel="training loss", title="LoRA rank x targets: training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)
    return drawn


def plot_curve(result: dict, path: str | Path) -> dict[str, list]:
    """curve.png: score against training examples (log2 axis), 95 % intervals, each seed's point, base as a line."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    rows = result["summary"]
    xs = [r["examples"] for r in rows]
    ys = [r["score"] for r in rows]
    errors = [[r["score"] - r["low"] for r in rows], [r["high"] - r["score"] for r in rows]]
    ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, color="tab:blue", label="fine-tuned (mean over seeds)")
    seeds = [(p["examples"], p["score"]) for p in result["points"]]
    if result["seeds"] > 1 and seeds:
        ax.scatter(*zip(*seeds, strict=True), s=12, color="tab:blue", alpha=0.4, label="each seed")
    base = result["base"]
    ax.axhline(base["score"], color="grey", linestyle="--", label=f"base model {base['score']:.2f}")
    if len(set(xs)) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set(xlabel="training examples", ylabel=result["metric"].replace("_", " "), ylim=(-0.02, 1.02))
    ax.set_title(f"data curve: {result['eval_n']} held-out examples, 95 % intervals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return {"mean": list(zip(xs, ys, strict=True)), "seeds": seeds, "base": [base["score"]]}
