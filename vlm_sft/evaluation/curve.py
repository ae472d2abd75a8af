"""How much data is enough: train on nested, seeded subsets of the training set and score every adapter.

    vlm-sft curve recipes/quickstart.yaml --fractions 0.1,0.25,0.5,1.0 --seeds 2 --out outputs/curve

One training run per (fraction, seed) point, through the sweep's machinery (`vlm_sft.evaluation.sweep`); each
fraction's subset contains the smaller ones of the same seed. Every adapter, and the base model once, answers
the recipe's held-out set by generation; bootstrap 95 % intervals are over those eval examples. A finished point
(its point.json) is never retrained. Writes curve.json, curve.md and curve.png into --out.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_sft.evaluation.intervals import bootstrap_interval, paired_difference

logger = logging.getLogger(__name__)

METRICS = ("exact_match", "token_f1", "score")  # per-example values of `vlm_sft.evaluation.metrics.score_example`


@dataclass
class CurvePlan:
    """What `vlm-sft curve` runs: the recipe (with overrides), the fractions, how many seeds, where to write."""

    recipe: str
    fractions: list[float]
    seeds: int = 1
    out: str = "outputs/curve"
    overrides: list[str] = field(default_factory=list)
    metric: str = "exact_match"
    eval_limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        self.fractions = sorted(set(self.fractions))
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"--fractions must be numbers in (0, 1], e.g. 0.25,0.5,1.0; got {self.fractions}.")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1; got {self.seeds}.")
        if self.metric not in METRICS:
            raise ValueError(f"--metric must be one of {', '.join(METRICS)}; got {self.metric!r}.")


def scoring_key(plan: CurvePlan) -> dict:
    """What a stored score depends on: a finished point scored otherwise is rescored (never retrained)."""
    return {"metric": plan.metric, "limit": plan.eval_limit, "max_new_tokens": plan.max_new_tokens}


def point_name(fraction: float, seed: int) -> str:
    return f"f{fraction:g}-s{seed}"


def nested_subsets(n: int, fractions: list[float], seed: int) -> dict[float, list[int]]:
    """Row indices per fraction: prefixes of one seeded permutation, so each subset contains the smaller ones."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return {f: sorted(order[: max(1, round(f * n))]) for f in fractions}


def _recipe_seed(recipe: Any) -> int:
    return int(recipe[1].seed)


def plan_points(plan: CurvePlan, n_train: int, recipe: Any) -> list[dict]:
    """Every (fraction, seed) point with its example count and optimizer steps (as training will count them)."""
    training = recipe[1]
    per_step = training.per_device_train_batch_size * training.gradient_accumulation_steps
    points = []
    for i in range(plan.seeds):
        seed = _recipe_seed(recipe) + i
        for fraction in plan.fractions:
            examples = max(1, round(fraction * n_train))
            steps = (
                training.max_steps
                if training.max_steps > 0
                else (math.ceil(examples / per_step) * math.ceil(training.num_train_epochs))
            )
            points.append(
                {
                    "name": point_name(fraction, seed),
                    "fraction": fraction,
                    "seed": seed,
                    "examples": examples,
                    "steps": steps,
                }  # fmt: skip
            )
    return points


def format_plan(points: list[dict], done: set[str], seconds_per_step: float | None) -> str:
    """The plan printed before anything trains: runs, steps, and the time estimate when one can be made."""
    todo = [p for p in points if p["name"] not in done]
    steps = sum(p["steps"] for p in todo)
    lines = [f"curve plan: {len(points)} points, {len(todo)} to train ({len(done & {p['name'] for p in points})} "
             f"finished), {steps} optimizer steps in all"]  # fmt: skip
    for p in points:
        state = "done" if p["name"] in done else "to train"
        lines.append(f"  {p['name']}: {p['examples']} examples, {p['steps']} steps ({state})")
    if seconds_per_step is None:
        lines.append("  time: estimated after the first run (from its seconds per step)")
    else:
        lines.append(f"  time: about {steps * seconds_per_step:.0f} s of training, plus scoring")
    return "\n".join(lines)


def _seconds_per_step(finished: list[dict]) -> float | None:
    timed = [p for p in finished if p.get("train_seconds") and p.get("steps")]
    return sum(p["train_seconds"] for p in timed) / sum(p["steps"] for p in timed) if timed else None


# ---------------------------------------------------------------------------------------------- runs


def write_subset(train_ds: Any, indices: list[int], folder: Path) -> Path:
    """The subset as a save_to_disk folder (any input format becomes the validated rows training reads)."""
    if not (folder / "dataset_info.json").is_file():
        train_ds.select(indices).save_to_disk(str(folder))
    return folder


def point_argv(plan: CurvePlan, point: dict, data: Path, out: Path) -> list[str]:
    """The training command line of one point: the recipe, its overrides, the subset, no evaluation during it."""
    return [
        plan.recipe,
        *plan.overrides,
        "--train_file", str(data),
        "--data_format", "auto",
        "--eval_fraction", "0",  # the subset is already without the held-out rows
        "--eval_strategy", "no",  # every adapter is scored afterwards, on the same set
        "--eval_generate", "false",
        "--load_best_model_at_end", "false",
        "--seed", str(point["seed"]),
        "--output_dir", str(out),
        "--overwrite_output_dir", "true",
    ]  # fmt: skip


def score_model(plan: CurvePlan, eval_set: Any, base: str, adapter: Path | None) -> list[float]:
    """Per-example values of `plan.metric` for the base model (adapter None) or one adapter."""
    from vlm_sft.evaluation.generate import AdapterSpec, evaluate_models

    adapters = [AdapterSpec(str(adapter), name="adapter")] if adapter else []
    report = evaluate_models(
        eval_set,
        adapters,
        base=base,
        include_base=adapter is None,
        batch_size=plan.batch_size,
        max_new_tokens=plan.max_new_tokens,
        progress=False,
    )
    name = "adapter" if adapter else "base"
    return [float(e["scores"][name][plan.metric]) for e in report["examples"]]


def _train_seconds(out: Path) -> float | None:
    state = json.loads((out / "trainer_state.json").read_text())
    return next((e["train_runtime"] for e in reversed(state["log_history"]) if "train_runtime" in e), None)


def run_point(plan: CurvePlan, point: dict, data: Path, eval_set: Any, base: str, launch: list[str] | None) -> dict:
    """Train one point, score its adapter, write its point.json (what makes it finished); returns the point."""
    from vlm_sft.evaluation.sweep import run_training

    out = Path(plan.out) / "runs" / point["name"]
    start = time.perf_counter()
    run_training(point_argv(plan, point, data, out), launch)
    result = {**point, "train_seconds": _train_seconds(out), "output_dir": str(out)}
    result = rescore(plan, result, eval_set, base)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    (out / "point.json").write_text(json.dumps(result) + "\n")
    return result


def rescore(plan: CurvePlan, point: dict, eval_set: Any, base: str) -> dict:
    """The point with its adapter's per-example values, mean and interval under the plan's scoring."""
    values = score_model(plan, eval_set, base, Path(point["output_dir"]))
    low, high = bootstrap_interval(values)
    scored = {"score": sum(values) / len(values), "low": low, "high": high, "scoring": scoring_key(plan)}
    return {**point, **scored, "per_example": values}


# ---------------------------------------------------------------------------------------------- results


def summarize(points: list[dict]) -> list[dict]:
    """Per fraction: mean over seeds, its interval over eval examples (seed-averaged), and the spread over seeds."""
    rows = []
    for fraction in sorted({p["fraction"] for p in points}):
        same = [p for p in points if p["fraction"] == fraction]
        averaged = [sum(vals) / len(vals) for vals in zip(*(p["per_example"] for p in same), strict=True)]
        low, high = bootstrap_interval(averaged)
        scores = [p["score"] for p in same]
        rows.append(
            {
                "fraction": fraction,
                "examples": same[0]["examples"],
                "seeds": len(same),
                "score": sum(scores) / len(scores),
                "low": low,
                "high": high,
                "seed_min": min(scores),
                "seed_max": max(scores),
                "per_example": averaged,
            }
        )
    return rows


def last_gain(summary: list[dict], metric: str) -> dict | None:
    """The gain from the second-largest to the largest subset (paired over eval examples), and one sentence on it."""
    if len(summary) < 2:
        return None
    small, large = summary[-2], summary[-1]
    gain, low, high = paired_difference(large["per_example"], small["per_example"])
    ratio = large["examples"] / small["examples"]
    doublings = math.log2(ratio) if ratio > 1 else 1.0
    if abs(ratio - 2) < 0.05:
        what = f"Doubling the data ({small['examples']} -> {large['examples']} examples)"
    else:
        sizes = f"{small['examples']} to {large['examples']} examples"
        what = f"Going from {sizes} (x{ratio:.3g}, {doublings:.2g} doublings)"
    if low > 0:
        verdict = "so more data of this kind still helps"
    elif high < 0:
        verdict = "so the larger set scored worse: look at what the added examples teach"
    else:
        verdict = "an interval that includes 0: more of the same data may not help; look at the worst examples"
    sentence = f"{what} changed {metric} by {gain:+.3f} (95 % interval {low:+.3f} to {high:+.3f}), {verdict}."
    per_doubling = gain / doublings
    return {"from": small["examples"], "to": large["examples"], "gain": gain, "low": low, "high": high,
            "gain_per_doubling": per_doubling, "sentence": sentence}  # fmt: skip


def format_markdown(result: dict) -> str:
    """curve.md: the table, the base model's score, the sentence, and how to read it."""
    metric = result["metric"]
    lines = [
        "# Data curve",
        "",
        f"Recipe `{result['recipe']}`; {metric} by greedy generation on {result['eval_n']} held-out examples "
        f"(`{result['eval_set']}`); nested, seeded subsets of the {result['train_n']} training examples; "
        f"{result['seeds']} seed(s) per fraction. Intervals: bootstrap 95 % over the eval examples.",
        "",
        f"| fraction | examples | {metric} | 95 % interval | seed min-max |",
        "|---:|---:|---:|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['fraction']:g} | {row['examples']} | {row['score']:.3f} | {row['low']:.3f}-{row['high']:.3f} "
            f"| {row['seed_min']:.3f}-{row['seed_max']:.3f} |"
        )
    base = result["base"]
    lines += ["", f"Base model (no training): {base['score']:.3f} ({base['low']:.3f}-{base['high']:.3f})."]
    if result["gain"]:
        lines += ["", result["gain"]["sentence"]]
    lines += [
        "",
        "How to read it: a curve still rising at the right means more examples of the same kind will help; a flat "
        "end (an interval for the last gain that includes 0) means the next gains come from better or more varied "
        "examples, not more of them. Intervals as wide as the gaps say the eval set is too small to tell.",
    ]
    return "\n".join(lines) + "\n"


def _public(points: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "per_example"} for p in points]


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """curve.json, curve.md, curve.png in out_dir (per-example values stay in each point's point.json)."""
    from vlm_sft.evaluation.plots import plot_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "curve.json", "md": out / "curve.md", "png": out / "curve.png"}
    public = {**result, "points": _public(result["points"]), "summary": _public(result["summary"])}
    paths["json"].write_text(json.dumps(public, indent=1) + "\n")
    paths["md"].write_text(format_markdown(result))
    plot_curve(public, paths["png"])
    return paths


# ---------------------------------------------------------------------------------------------- the command


def run_curve(plan: CurvePlan, *, only: list[str] | None = None, launch: list[str] | None = None) -> dict:
    """Plan, train the points not yet finished, score, write curve.json / .md / .png; returns the result."""
    from vlm_sft.data.loading import load_splits
    from vlm_sft.evaluation.sweep import check_local_model
    from vlm_sft.training.recipe import load_recipe, recipe_eval_set

    recipe = load_recipe(plan.recipe, plan.overrides)
    base = recipe[2].model_name_or_path
    check_local_model(base)
    train_ds = load_splits(recipe[3], seed=recipe[1].seed)[0]
    eval_set = recipe_eval_set(recipe, limit=plan.eval_limit)
    if eval_set is None:
        raise ValueError(f"{plan.recipe} has no eval set: give eval_file or eval_fraction (the curve scores on it).")
    points = plan_points(plan, len(train_ds), recipe)
    if only:
        missing = sorted(set(only) - {p["name"] for p in points})
        if missing:
            raise ValueError(f"--only {missing}: not in the plan ({', '.join(p['name'] for p in points)}).")
    out = Path(plan.out)
    finished = {}
    for p in points:
        marker = out / "runs" / p["name"] / "point.json"
        if marker.is_file():
            finished[p["name"]] = json.loads(marker.read_text())
    print(format_plan(points, set(finished), _seconds_per_step(list(finished.values()))), flush=True)
    subsets = {i: nested_subsets(len(train_ds), plan.fractions, _recipe_seed(recipe) + i) for i in range(plan.seeds)}
    for name, p in finished.items():
        if p.get("scoring") != scoring_key(plan):  # e.g. another --limit or --max-new-tokens: same adapter, rescored
            finished[name] = rescore(plan, p, eval_set, base)
            (out / "runs" / name / "point.json").write_text(json.dumps(finished[name]) + "\n")
    for p in points:
        if p["name"] in finished or (only and p["name"] not in only):
            continue
        i = p["seed"] - _recipe_seed(recipe)
        data = write_subset(train_ds, subsets[i][p["fraction"]], out / "data" / p["name"])
        logger.info("curve point %s: %d examples", p["name"], p["examples"])
        finished[p["name"]] = run_point(plan, p, data, eval_set, base, launch)
        left = sum(q["steps"] for q in points if q["name"] not in finished and not (only and q["name"] not in only))
        rate = _seconds_per_step(list(finished.values()))
        if left and rate:
            print(f"curve: {p['name']} done; about {left * rate:.0f} s of training left", flush=True)
    base_file = out / "base.json"
    stored = json.loads(base_file.read_text()) if base_file.is_file() else {}
    if stored.get("scoring") != scoring_key(plan):
        stored = {"scoring": scoring_key(plan), "per_example": score_model(plan, eval_set, base, None)}
        base_file.write_text(json.dumps(stored) + "\n")
    base_values = stored["per_example"]
    low, high = bootstrap_interval(base_values)
    done = [finished[p["name"]] for p in points if p["name"] in finished]
    summary = summarize(done)
    result = {
        "recipe": plan.recipe,
        "metric": plan.metric,
        "eval_set": eval_set.path,
        "eval_n": len(eval_set.rows),
        "train_n": len(train_ds),
        "seeds": plan.seeds,
        "base": {"score": sum(base_values) / len(base_values), "low": low, "high": high},
        "points": done,
        "summary": summary,
        "gain": last_gain(summary, plan.metric),
    }
    write_outputs(result, out)
    return result
