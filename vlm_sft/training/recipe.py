"""A recipe read exactly as training reads it, and the eval set training held out, for eval, quickstart and sweep."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

    from vlm_sft.evaluation.generate import EvalSet
    from vlm_sft.training.train import RecipeArgs


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> RecipeArgs:
    """`vlm_sft.training.train.parse_recipe` on `path --key value ...` (validated; overrides win over the YAML).

    On a machine without CUDA, `--use_cpu true` is appended so GPU recipes (bf16) still parse.
    """
    import torch

    from vlm_sft.training.train import parse_recipe

    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    return parse_recipe(["--config", str(path), *map(str, overrides), *cpu])


def recipe_keys() -> set[str]:
    """Every key a recipe may hold: the fields of TRL's ScriptArguments, SFTConfig, ModelConfig and ours."""
    from dataclasses import fields

    from trl import ModelConfig, ScriptArguments, SFTConfig

    from vlm_sft.training.config import VisionArguments

    return {f.name for cls in (ScriptArguments, SFTConfig, ModelConfig, VisionArguments) for f in fields(cls)}


def yaml_scalar(text: str) -> Any:
    """A command-line value read as the recipe's YAML would read it (3 -> int, 1e-3 -> float, true -> bool)."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; a float is meant
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_key_values(tokens: Sequence[str]) -> dict[str, Any]:
    """`--key value` / `--key=value` pairs (a bare `--flag` is true) -> {key: value}, spelled as recipe keys.

    Raises ValueError naming the token for anything else, and for a key no recipe has.
    """
    values: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"{token!r}: expected a recipe key, e.g. --num_train_epochs 1")
        key, sep, value = token[2:].partition("=")
        if not sep:
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            value = tokens[i + 1] if has_value else "true"
            i += has_value
        values[key] = yaml_scalar(value)
        i += 1
    unknown = sorted(set(values) - recipe_keys())
    if unknown:
        raise ValueError(
            f"not a recipe key: {', '.join('--' + k for k in unknown)} (recipe keys are spelled as in the YAML, "
            "e.g. --num_train_epochs, --lora_r)"
        )
    return values


def eval_split(recipe: RecipeArgs) -> datasets.Dataset | None:
    """The eval Dataset exactly as training builds it (eval_file, or the seeded eval_fraction split); None if none."""
    from vlm_sft.data.loading import load_splits

    return load_splits(recipe.vision, seed=recipe.training_args.seed)[1]


def has_eval_set(recipe: RecipeArgs) -> bool:
    vision = recipe.vision
    return bool(vision.eval_file or vision.eval_fraction)


def recipe_eval_set(recipe: RecipeArgs, limit: int | None = None) -> EvalSet | None:
    """The eval set training held out, as the EvalSet `vlm_sft.evaluation.generate` scores (first `limit` rows).

    When the recipe's output_dir holds the run's record (`eval_split.json`), exactly the recorded rows, after a
    check that the recipe describes the same split (`HeldOutMismatchError` otherwise). Without a record (a run
    from before records) the split is rebuilt from the recipe, and the EvalSet's note says what that cannot know.
    None when the recipe has no eval set.
    """
    from vlm_sft.evaluation.generate import eval_set_from_dataset
    from vlm_sft.training.heldout import check_recipe, read_record

    script_args, training_args, _, vision = recipe
    if script_args.dataset_name and not vision.train_file:
        vision.train_file = script_args.dataset_name  # as training reads it (vlm_sft.training.train._setup_data)
    output_dir = training_args.output_dir
    record = read_record(output_dir) if output_dir else None
    if record is not None:
        check_recipe(record, training_args, vision, output_dir)
        return run_eval_set(output_dir, limit, image_dir=vision.image_dir, record=record)
    ds = eval_split(recipe)
    if ds is None:
        return None
    path = vision.eval_file or f"{vision.train_file} (eval_fraction={vision.eval_fraction}, seed={training_args.seed})"
    eval_set = eval_set_from_dataset(ds, str(path), limit)
    eval_set.system_prompt = vision.system_prompt
    eval_set.note = f"rebuilt from the recipe: {output_dir} holds no record of the split training held out"
    if training_args.max_length and vision.too_long == "drop":
        eval_set.note += f"; samples over max_length={training_args.max_length} were not dropped as in training"
    return eval_set


def run_eval_set(
    output_dir: str | Path, limit: int | None = None, *, image_dir: str | None = None, record: dict | None = None
) -> EvalSet | None:
    """The rows the run in output_dir held out (its `eval_split.json`), or None when it recorded none."""
    from vlm_sft.evaluation.generate import eval_set_from_dataset
    from vlm_sft.training.heldout import describe, held_out_dataset, read_record

    record = record or read_record(output_dir)
    if record is None:
        return None
    ds = held_out_dataset(record, output_dir, image_dir)
    eval_set = eval_set_from_dataset(ds, describe(record, output_dir), limit)
    eval_set.system_prompt = record["parameters"]["system_prompt"]
    return eval_set
