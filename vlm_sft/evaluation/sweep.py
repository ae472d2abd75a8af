"""LoRA sweep: one training run per grid point, all sharing a base recipe; which converges fastest, which ends lowest.

    vlm-sft sweep recipes/sweeps/lora_rank_targets.yaml       (or python scripts/sweep_lora.py ...)

Each configuration is a separate training run (its own output folder, same seed and data order) through
`vlm_sft.training.train`, in this process by default or under `accelerate launch` (`--launch`). Afterwards every
adapter is scored on the base recipe's eval set by generation (`vlm_sft.evaluation.generate`), and the sweep writes
sweep.json (everything), sweep.md (the table and the verdicts) and sweep.png (loss curves).
"""

from __future__ import annotations

import itertools
import json
import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

_EVAL_KEYS = {"limit", "batch_size", "max_new_tokens"}
# Short names for grid values in run names: r16-attention, not lora_r=16_lora_target=attention.
_SHORT = {"lora_r": "r", "lora_target": "", "learning_rate": "lr", "lora_dropout": "drop", "projector_lr": "plr"}
FINAL_LOSS_STEPS = 5  # "final loss": the mean of the last 5 logged training losses


@dataclass
class SweepSpec:
    """A sweep file: the base recipe, the grid, what every run overrides, and how runs are compared.

    Args:
        base_recipe: The training recipe every run starts from.
        output_dir: Runs go to output_dir/<run name>; sweep.json / .md / .png to output_dir.
        grid: Recipe key -> values; one run per combination (Cartesian product).
        overrides: Recipe keys set in every run (e.g. fewer epochs than the base recipe).
        lora_alpha_per_r: When set, each run's lora_alpha = this x lora_r, so the LoRA scale alpha/r stays
            fixed and ranks are compared at the same effective step size; null keeps the recipe's alpha.
        loss_threshold: "Steps to converge" = first logged step whose training loss is at or below this.
        eval: Generation eval of every adapter on the recipe's eval set: {limit, batch_size, max_new_tokens};
            null skips it.
    """

    base_recipe: str
    grid: dict[str, list]
    output_dir: str = "outputs/sweep"
    overrides: dict[str, Any] = field(default_factory=dict)
    lora_alpha_per_r: float | None = None
    loss_threshold: float = 0.5
    eval: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.grid or not all(isinstance(v, list) and v for v in self.grid.values()):
            raise ValueError(
                f"grid must map recipe keys to non-empty lists, e.g. {{lora_r: [4, 16]}}; got {self.grid}"
            )
        if self.eval is not None and set(self.eval) - _EVAL_KEYS:
            raise ValueError(f"unknown eval keys {sorted(set(self.eval) - _EVAL_KEYS)}; allowed: {sorted(_EVAL_KEYS)}")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep YAML; an unknown key is an error that names it."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(SweepSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown sweep keys {unknown}; allowed: {sorted(known)}.")
    return SweepSpec(**values)


def run_name(params: dict[str, Any]) -> str:
    """r16-attention for {lora_r: 16, lora_target: attention}."""
    return "-".join(f"{_SHORT.get(k, k + '=')}{v}" for k, v in params.items())


def expand(spec: SweepSpec) -> list[dict]:
    """One config per grid combination: {name, params (grid values + derived lora_alpha)}."""
    configs = []
    for values in itertools.product(*spec.grid.values()):
        params = dict(zip(spec.grid, values, strict=True))
        name = run_name(params)
        if spec.lora_alpha_per_r is not None and "lora_r" in params:
            alpha = spec.lora_alpha_per_r * params["lora_r"]
            params["lora_alpha"] = int(alpha) if float(alpha).is_integer() else alpha  # ModelConfig wants an int
        configs.append({"name": name, "params": params})
    return configs


def cli_value(value: Any) -> str:
    if value is None:
        raise ValueError("null is not a value a run can override; leave the key out to keep the recipe's.")
    return str(value).lower() if isinstance(value, bool) else str(value)


def recipe_argv(spec: SweepSpec, config: dict) -> list[str]:
    """`recipe.yaml --key value ...` for one run: sweep overrides, then the grid point, then its output folder."""
    argv = [spec.base_recipe]
    for key, value in {**spec.overrides, **config["params"]}.items():
        argv += [f"--{key}", cli_value(value)]
    return argv + ["--output_dir", str(Path(spec.output_dir) / config["name"])]


def check_configs(spec: SweepSpec, configs: list[dict]) -> list[str]:
    """Parse every run's recipe before the first one trains, so a bad key fails now and not after run 5.

    Returns each run's base model (name or path).
    """
    from vlm_sft.training.train import parse_recipe

    return [parse_recipe(recipe_argv(spec, config)).model_args.model_name_or_path for config in configs]


def check_local_model(model: str) -> None:
    if model.startswith((".", "/")) and not Path(model).exists():
        raise ValueError(
            f"{model} (the base recipe's model) does not exist; for the quickstart's, run "
            "`vlm-sft quickstart prepare` first."
        )


# ---------------------------------------------------------------------------------------------- runs


def run_training(argv: list[str], launch: list[str] | None) -> None:
    """One training run: in this process, or in a fresh one under `launch` (e.g. accelerate launch ...)."""
    if launch is None:
        from vlm_sft.training.train import parse_recipe, train

        train(*parse_recipe(argv))
        return
    cmd = [*launch, "-m", "vlm_sft.cli", "train", *argv]
    logger.info("running %s", shlex.join(cmd))
    subprocess.run(cmd, check=True)


def steps_to_threshold(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """First logged step whose loss is <= threshold (None if never)."""
    return next((step for step, loss in curve if loss <= threshold), None)


def final_loss(curve: list[tuple[int, float]], last: int = FINAL_LOSS_STEPS) -> float | None:
    """Mean of the last `last` logged training losses (each already a logging window's mean); None if none."""
    tail = [loss for _, loss in curve[-last:]]
    return sum(tail) / len(tail) if tail else None


def collect(spec: SweepSpec, config: dict, wall_seconds: float) -> dict:
    """A finished run's numbers, read from what training wrote to its output folder."""
    from vlm_sft.evaluation.plots import loss_curves
    from vlm_sft.modeling.parameters import adapter_size_mb

    out = Path(spec.output_dir) / config["name"]
    state = json.loads((out / "trainer_state.json").read_text())
    params = json.loads((out / "trainable_parameters.json").read_text())
    curve = loss_curves(state["log_history"]).get("train", [])
    runtime = next((e["train_runtime"] for e in reversed(state["log_history"]) if "train_runtime" in e), None)
    return {
        **config,
        "output_dir": str(out),
        "trainable_params": params["trainable"],
        "lora_params": sum(params["lora_targets"].values()),
        "adapter_mb": round(adapter_size_mb(out), 3),
        "wall_seconds": round(wall_seconds, 1),
        "train_seconds": None if runtime is None else round(runtime, 1),
        "steps": state["global_step"],
        "logging_steps": state.get("logging_steps"),
        "final_loss": final_loss(curve),
        "steps_to_threshold": steps_to_threshold(curve, spec.loss_threshold),
        "loss_curve": [list(p) for p in curve],
        "eval_score": None,
    }


def score_adapters(spec: SweepSpec, runs: list[dict]) -> float | None:
    """Exact match of every run's adapter (and the base model) on the recipe's eval set; returns the base's."""
    from vlm_sft.evaluation.generate import AdapterSpec, evaluate_models
    from vlm_sft.training.recipe import has_eval_set, load_recipe, recipe_eval_set

    if spec.eval is None:
        return None
    overrides = [x for key, value in spec.overrides.items() for x in (f"--{key}", cli_value(value))]
    recipe = load_recipe(spec.base_recipe, overrides)  # as every run's training reads it (the grid aside)
    if not has_eval_set(recipe):
        return None
    options = {"batch_size": 16, "max_new_tokens": 16, **{k: v for k, v in spec.eval.items() if k != "limit"}}
    # The held-out set the runs recorded (every run holds out the same rows), else the recipe's, rebuilt.
    eval_set = _recorded_eval_set(runs, spec.eval.get("limit")) or recipe_eval_set(
        recipe, limit=spec.eval.get("limit")
    )
    adapters = [AdapterSpec(r["output_dir"], name=r["name"]) for r in runs]
    report = evaluate_models(eval_set, adapters, base=recipe.model_args.model_name_or_path, **options)
    scores = {m["name"]: m["metrics"]["exact_match"] for m in report["models"]}
    for run in runs:
        run["eval_score"] = scores[run["name"]]
    return scores["base"]


def _recorded_eval_set(runs: list[dict], limit: int | None):
    """The eval set the runs recorded (eval_split.json), refusing runs that held out different rows; or None."""
    from vlm_sft.training.heldout import HeldOutMismatchError, read_record
    from vlm_sft.training.recipe import run_eval_set

    records = {r["name"]: read_record(r["output_dir"]) for r in runs}
    if not runs or any(rec is None for rec in records.values()):
        return None
    first = runs[0]["name"]
    differ = [name for name, rec in records.items() if rec["keys"] != records[first]["keys"]]
    if differ:
        raise HeldOutMismatchError(
            f"runs {', '.join(differ)} held out other eval rows than {first} (their eval_split.json): one score "
            "table needs one eval set. Keep the split keys (eval_fraction, seed, max_length) out of the grid."
        )
    return run_eval_set(runs[0]["output_dir"], limit, record=records[first])


def _winners(runs: list[dict], key: str, best: Callable[[Iterable[Any]], Any]) -> list[str]:
    """Names of every run that shares the best value of `key` (runs without a value left out)."""
    values = [r[key] for r in runs if r[key] is not None]
    if not values:
        return []
    top = best(values)
    return [r["name"] for r in runs if r[key] == top]


def verdicts(runs: list[dict], base_score: float | None = None) -> dict[str, Any]:
    """Fewest steps to the loss threshold, lowest final loss, best eval score: a name only for a sole winner.

    Equal values are ties, named in `ties`, never broken by wall time (which includes the first run's warm-up
    and whatever else shared the machine). No run is "best" by eval score unless it beats the base model.
    """
    ties = {
        "fastest_converging": _winners(runs, "steps_to_threshold", min),
        "best_final_loss": _winners(runs, "final_loss", min),
        "best_eval_score": _winners(runs, "eval_score", max),
    }
    top = next((r["eval_score"] for r in runs if r["name"] in ties["best_eval_score"]), None)
    if top is not None and base_score is not None and top <= base_score:
        ties["best_eval_score"] = []  # tying or trailing the base model wins nothing
    result: dict[str, Any] = {k: names[0] if len(names) == 1 else None for k, names in ties.items()}
    result["ties"] = {k: names for k, names in ties.items() if len(names) > 1}
    return result


def run_sweep(spec: SweepSpec, *, only: list[str] | None = None, launch: list[str] | None = None) -> dict:
    """Train every configuration, score the adapters, write sweep.json / .md / .png; returns the result."""
    configs = expand(spec)
    if only:
        missing = sorted(set(only) - {c["name"] for c in configs})
        if missing:
            raise ValueError(f"--only {missing}: not in the grid ({', '.join(c['name'] for c in configs)}).")
        configs = [c for c in configs if c["name"] in only]
    for model in set(check_configs(spec, configs)):
        check_local_model(model)
    runs = []
    for i, config in enumerate(configs, 1):
        logger.info("sweep run %d/%d: %s %s", i, len(configs), config["name"], config["params"])
        start = time.perf_counter()
        run_training(recipe_argv(spec, config), launch)
        runs.append(collect(spec, config, time.perf_counter() - start))
    base_score = score_adapters(spec, runs)
    result = {"sweep": asdict(spec), "base_eval_score": base_score, "runs": runs, **verdicts(runs, base_score)}
    write_outputs(result, spec.output_dir)
    return result


# ---------------------------------------------------------------------------------------------- outputs


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: dict) -> str:
    """The markdown table: one row per configuration."""
    threshold = result["sweep"]["loss_threshold"]
    head = ["config", "r", "targets", "alpha", "trainable params", "LoRA params", "adapter MB", "wall s"]
    head += ["final loss", f"steps to loss ≤ {threshold:g}", "eval exact match"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in result["runs"]:
        p = r["params"]
        reached = "not reached" if r["steps_to_threshold"] is None else f"{r['steps_to_threshold']} / {r['steps']}"
        cells = [r["name"], str(p.get("lora_r", "-")), str(p.get("lora_target", "-")), _num(p.get("lora_alpha"), "g")]
        cells += [f"{r['trainable_params']:,}", f"{r['lora_params']:,}", f"{r['adapter_mb']:.2f}"]
        cells += [f"{r['wall_seconds']:.1f}", _num(r["final_loss"], ".3f"), reached, _num(r["eval_score"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """sweep.md: what was run, the table, and which configuration won on what."""
    sweep, runs = result["sweep"], {r["name"]: r for r in result["runs"]}
    overrides = ", ".join(f"{k}={v}" for k, v in sweep["overrides"].items()) or "none"
    alpha = (
        f"lora_alpha = {sweep['lora_alpha_per_r']:g} x r" if sweep["lora_alpha_per_r"] else "the recipe's lora_alpha"
    )
    any_run = next(iter(runs.values()), {})
    lines = [
        "# LoRA sweep",
        "",
        f"Base recipe `{sweep['base_recipe']}`; every run overrides {overrides}; {alpha}.",
        f"Training loss is logged every {any_run.get('logging_steps')} steps (the mean over that window): "
        f'"final loss" is the mean over the last {FINAL_LOSS_STEPS} logged steps; '
        f'"steps to loss ≤ {sweep["loss_threshold"]:g}" is the first logged step whose window is at or under it.',
    ]
    if result["base_eval_score"] is not None:
        limit = (sweep["eval"] or {}).get("limit")
        lines.append(
            f"Eval: exact match by generation on {'the first ' + str(limit) if limit else 'all'} held-out examples "
            f"of the recipe's eval set; the base model scores {result['base_eval_score']:.3f}."
        )
    lines += ["", format_table(result), ""]
    lines += _verdict_lines(result, runs, sweep["loss_threshold"])
    return "\n".join(lines) + "\n"


def _verdict_lines(result: dict, runs: dict[str, dict], threshold: float) -> list[str]:
    """Which configuration won on what; ties are named as ties, and nothing "wins" by tying the base model."""
    ties, lines = result.get("ties", {}), []
    fastest, best = result["fastest_converging"], result["best_final_loss"]
    if fastest:
        r = runs[fastest]
        lines.append(
            f"- **Fastest converging: {fastest}**: loss ≤ {threshold:g} at step "
            f"{r['steps_to_threshold']} of {r['steps']} ({r['wall_seconds']:.1f} s for the whole run)."
        )
    elif ties.get("fastest_converging"):
        names = ties["fastest_converging"]
        lines.append(
            f"- **Fastest converging**: a tie between {', '.join(names)} (loss ≤ {threshold:g} at step "
            f"{runs[names[0]]['steps_to_threshold']}); wall time does not break it (it includes warm-up)."
        )
    else:
        lines.append(f"- **Fastest converging**: no configuration reached loss ≤ {threshold:g}.")
    if best:
        lines.append(f"- **Best final loss: {best}**: {runs[best]['final_loss']:.3f}.")
    elif ties.get("best_final_loss"):
        names = ties["best_final_loss"]
        lines.append(f"- **Best final loss**: a tie between {', '.join(names)} at {runs[names[0]]['final_loss']:.3f}.")
    scored = [r for r in runs.values() if r["eval_score"] is not None]
    if result.get("best_eval_score"):
        name = result["best_eval_score"]
        lines.append(f"- Best eval score: {name}: {runs[name]['eval_score']:.3f} exact match.")
    elif ties.get("best_eval_score"):
        names = ties["best_eval_score"]
        lines.append(
            f"- Eval score: no best; {', '.join(names)} tie at {runs[names[0]]['eval_score']:.3f} exact match."
        )
    elif scored:
        top = max(r["eval_score"] for r in scored)
        lines.append(
            f"- Eval score: no best; no configuration beats the base model ({result['base_eval_score']:.3f}); "
            f"the highest is {top:.3f} ({', '.join(r['name'] for r in scored if r['eval_score'] == top)})."
        )
    return lines


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """sweep.json, sweep.md and sweep.png in out_dir."""
    from vlm_sft.evaluation.plots import plot_sweep

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sweep.json", "md": out / "sweep.md", "png": out / "sweep.png"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["md"].write_text(format_markdown(result))
    plot_sweep(result["runs"], paths["png"], threshold=result["sweep"]["loss_threshold"])
    return paths
