"""`vlm-sft train recipe.yaml [--key value ...]`: the same job as `scripts/sft_vlm.py`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipes/X.yaml")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs that override the recipe")


def run(args: argparse.Namespace) -> int:
    from vlm_sft.training.train import main

    return main([args.recipe, *args.overrides])
