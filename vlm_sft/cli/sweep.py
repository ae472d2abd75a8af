"""`vlm-sft sweep SWEEP.yaml [--recipe_key value ...]`: one training run per grid point, then the comparison.

    vlm-sft sweep recipes/sweeps/lora_rank_targets.yaml
    vlm-sft sweep recipes/sweeps/lora_rank_targets.yaml --num_train_epochs 1 --only r4-qv,r64-qv

Recipe keys after the sweep file override the base recipe in every run, spelled as in the recipe and as
`vlm-sft train` takes them (`--set key=value` is the older spelling of the same). All logic lives in
`vlm_sft.evaluation.sweep`. Exit codes: 0 done, 1 a bad sweep file or a failed run, 2 a usage error.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

# `--key value` pairs this command does not know itself are recipe keys (vlm_sft.cli.parse_command).
TAKES_RECIPE_KEYS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="recipes/sweeps/X.yaml; recipe keys (--num_train_epochs 1) may follow it")
    # The sweep file's own keys, spelled as in the file (the dashed spellings still work).
    parser.add_argument("--base_recipe", "--base-recipe", dest="base_recipe", help="train from this recipe instead")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", help="runs and sweep.* go here instead")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="same as --KEY VALUE")
    parser.add_argument("--only", help="comma-separated run names, e.g. r4-qv,r64-attention")
    parser.add_argument("--no-eval", action="store_true", help="skip scoring the adapters by generation")
    parser.add_argument(
        "--launch",
        help='run each training in a new process under this launcher, e.g. "accelerate launch --num_processes 2"',
    )


def overrides(args: argparse.Namespace) -> dict:
    """Recipe keys given as `--key value` after the sweep file and as `--set key=value`; ValueError names a bad one."""
    from vlm_sft.training.recipe import parse_key_values

    for item in args.set:
        if "=" not in item or item.startswith("="):
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set num_train_epochs=1")
    return parse_key_values([*(f"--{item}" for item in args.set), *getattr(args, "recipe_keys", [])])


def run(args: argparse.Namespace) -> int:
    from vlm_sft.evaluation.sweep import format_markdown, load_sweep, run_sweep
    from vlm_sft.logs import setup_logging

    try:
        extra = overrides(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging()
    try:
        spec = load_sweep(args.sweep)
        spec.base_recipe = args.base_recipe or spec.base_recipe
        spec.output_dir = args.output_dir or spec.output_dir
        spec.overrides = {**spec.overrides, **extra}
        spec.eval = None if args.no_eval else spec.eval
        only = [n.strip() for n in args.only.split(",")] if args.only else None
        result = run_sweep(spec, only=only, launch=shlex.split(args.launch) if args.launch else None)
    except (ValueError, FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_markdown(result))
    print(f"sweep: {Path(spec.output_dir) / 'sweep.md'}, sweep.json, sweep.png")
    return 0
