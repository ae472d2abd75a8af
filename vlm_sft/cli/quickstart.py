"""`vlm-sft quickstart prepare|report`: the tiny model and digits, then base vs fine-tuned (vlm_sft.quickstart)."""

from __future__ import annotations

import argparse
import logging
import sys

from vlm_sft.quickstart.pipeline import DEFAULT_RECIPE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", choices=["prepare", "report"], help="prepare: build model and data; report: score")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="the quickstart recipe (paths are read from it)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N held-out digits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="report: keep the result in docs/quickstart_result.json and rewrite README.md's figures from it",
    )


def run(args: argparse.Namespace) -> int:
    import yaml

    from vlm_sft.quickstart.pipeline import prepare, report
    from vlm_sft.training.recipe import load_recipe

    logging.basicConfig(level=logging.WARNING)
    try:
        recipe = load_recipe(args.recipe)  # parsed and validated as training parses it
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"error: cannot read the recipe {args.recipe}: {err}", file=sys.stderr)
        return 2
    if args.step == "prepare":
        prepare(recipe)
    else:
        print(report(recipe, args.limit, args.batch_size, update_readme=args.update_readme))
    return 0
