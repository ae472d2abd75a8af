"""A recipe read exactly as training reads it, and the eval set training held out, for eval, quickstart and sweep."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

    from vlm_sft.evaluation.generate import EvalSet
    from vlm_sft.training.train import RecipeArgs


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> RecipeArgs:
    """`vlm_sft.train.parse_recipe` on `path --key value ...` (validated; overrides win over the YAML).

    On a machine without CUDA, `--use_cpu true` is appended so GPU recipes (bf16) still parse.
    """
    import torch

    from vlm_sft.training.train import parse_recipe

    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    return parse_recipe(["--config", str(path), *map(str, overrides), *cpu])


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
