"""`vlm-sft curve RECIPE --fractions 0.1,0.25,0.5,1.0 --seeds 2 --out DIR`: score against amount of training data.

    vlm-sft curve recipes/quickstart.yaml --fractions 0.25,1.0 --seeds 1 --out outputs/curve
    vlm-sft curve recipes/quickstart.yaml --fractions 0.25,1.0 --out outputs/curve --only f0.25-s42  # one point

Prints the plan first; a finished point is not retrained (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="the training recipe (YAML); its eval set scores every point")
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1.0", help="comma-separated fractions of the train set")
    parser.add_argument("--seeds", type=int, default=1, help="subsets (and training seeds) per fraction")
    parser.add_argument("--out", default="outputs/curve", help="runs/, curve.json, curve.md and curve.png go here")
    parser.add_argument("--only", help="comma-separated point names from the plan, e.g. f0.25-s42")
    parser.add_argument("--metric", default="exact_match", choices=["exact_match", "token_f1", "score"])
    parser.add_argument("--limit", type=int, help="score on the first N held-out examples only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, every run")
    parser.add_argument("--launch", help='train each point under this launcher, e.g. "accelerate launch"')


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    from vlm_sft.data.loading import DataError
    from vlm_sft.evaluation.curve import CurvePlan, run_curve
    from vlm_sft.training.recipe import load_recipe

    try:
        overrides = []
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--set {item!r}: expected key=value, e.g. --set num_train_epochs=2")
            overrides += [f"--{key}", value]
        plan = CurvePlan(
            recipe=args.recipe,
            fractions=[float(f) for f in args.fractions.split(",") if f.strip()],
            seeds=args.seeds,
            out=args.out,
            overrides=overrides,
            metric=args.metric,
            eval_limit=args.limit,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        load_recipe(plan.recipe, plan.overrides)  # a bad recipe or override is a usage error, before any work
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    try:
        result = run_curve(plan, only=only, launch=shlex.split(args.launch) if args.launch else None)
    except (DataError, ValueError, OSError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result["gain"]:
        print(result["gain"]["sentence"])
    print(f"curve: {args.out}/curve.md, curve.json, curve.png")
    return 0
