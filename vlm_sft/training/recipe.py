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
    """`eval_split` as the EvalSet `vlm_sft.evaluation.generate` scores (the first `limit` rows); None if none."""
    from vlm_sft.evaluation.generate import eval_set_from_dataset

    ds = eval_split(recipe)
    if ds is None:
        return None
    vision, seed = recipe.vision, recipe.training_args.seed
    path = vision.eval_file or f"{vision.train_file} (eval_fraction={vision.eval_fraction}, seed={seed})"
    return eval_set_from_dataset(ds, str(path), limit)
