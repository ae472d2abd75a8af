"""The quickstart (`vlm-sft quickstart prepare|report`): the embedded default that runs anywhere, offline.

`make quickstart` runs `prepare` (tiny LLaVA model + digits data into .cache/), then the real
training command `accelerate launch scripts/sft_vlm.py recipes/quickstart.yaml`, then `report`,
which scores base and fine-tuned model on the held-out digits by generation (the code of `vlm-sft eval`;
the full report lands in outputs/quickstart/eval/), prints the side-by-side table and then one line:

    quickstart: base_accuracy=0.09 finetuned_accuracy=0.93 train_seconds=41
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlm_sft.training.train import RecipeArgs

DEFAULT_RECIPE = "recipes/quickstart.yaml"


def prepare(recipe: RecipeArgs) -> None:
    """Build the tiny model and write the digits where the recipe expects them (idempotent)."""
    from vlm_sft.quickstart.digits import write_digits_dataset
    from vlm_sft.quickstart.tiny_model import build_tiny_llava

    model_dir = build_tiny_llava(recipe.model_args.model_name_or_path)
    files = write_digits_dataset(Path(recipe.vision.train_file).parent)
    print(f"tiny model: {model_dir}\ndigits: {files['train']} (train), {files['eval']} (held out)")


def _train_seconds(output_dir: Path) -> float:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return next(e["train_runtime"] for e in reversed(state["log_history"]) if "train_runtime" in e)


def report(recipe: RecipeArgs, limit: int | None, batch_size: int, *, update_readme: bool = False) -> str:
    """Score base and adapter on the held-out digits with `vlm-sft eval`'s code; return the one-line summary.

    The full report (eval_report.json / .md / .png, worst examples included) goes to <output_dir>/eval.
    """
    from vlm_sft.evaluation.generate import AdapterSpec, evaluate_models, format_table, write_report
    from vlm_sft.training.output_dir import record_written
    from vlm_sft.training.recipe import recipe_eval_set

    output_dir = Path(recipe.training_args.output_dir)
    eval_set = recipe_eval_set(recipe, limit=limit)  # the held-out set exactly as training built it
    if eval_set is None:
        raise ValueError("the recipe has no eval set: give eval_file or eval_fraction.")
    result = evaluate_models(
        eval_set,
        [AdapterSpec(str(output_dir), name="fine-tuned")],
        base=recipe.model_args.model_name_or_path,
        batch_size=batch_size,
        max_new_tokens=4,  # a digit and end of turn; more only lets the untrained base ramble
        progress=False,
    )
    write_report(result, output_dir / "eval")
    record_written(output_dir / "eval")  # part of the run now: the next `make quickstart` may replace it
    print(format_table(result))
    accuracy = {m["name"]: m["metrics"]["exact_match"] for m in result["models"]}
    line = (
        f"quickstart: base_accuracy={accuracy['base']:.2f} "
        f"finetuned_accuracy={accuracy['fine-tuned']:.2f} "
        f"train_seconds={_train_seconds(output_dir):.0f}"
    )
    if update_readme:  # the README's figures come from this run (vlm_sft.quickstart.readme)
        from vlm_sft.quickstart import readme

        readme.update_readme(json.loads(readme.save_result(result, line).read_text()))
    return line
