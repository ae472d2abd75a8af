"""`vlm-sft eval [ADAPTER ...] --eval-file FILE`: base model vs each adapter, by generation, on held-out data.

    vlm-sft eval outputs/quickstart --eval-file .cache/digits/eval.json --image-dir .cache/digits/images
    vlm-sft eval --recipe recipes/quickstart.yaml            # base, adapter and eval set from the recipe
    vlm-sft eval outputs/run                                  # the eval set the run recorded (eval_split.json)
    vlm-sft eval r16=outputs/r16 me/llava-lora@v2 --base llava-hf/llava-1.5-7b-hf --eval-file eval.json

Without --eval-file, the examples scored are the ones training held out, as recorded in the run's
eval_split.json (after command-line overrides and the too_long policy); a recipe that describes another
split is refused. Writes eval_report.json / .md / .png into --out and prints the side-by-side table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vlm_sft.cli.types import non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "adapters", nargs="*", metavar="ADAPTER", help="[NAME=]FOLDER_OR_HUB_ID[@REVISION], one or more"
    )
    parser.add_argument("--recipe", help="take base model, eval set, image_dir and adapter (output_dir) from a recipe")
    parser.add_argument("--base", help="base model folder or Hub id (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--base-revision", help="revision of a Hub base model")
    parser.add_argument("--no-base", action="store_true", help="evaluate the adapters only")
    parser.add_argument("--eval-file", help="held-out conversations: LLaVA / messages JSON(L), a save_to_disk folder")
    parser.add_argument("--image-dir", help="folder that image paths are relative to (default: the file's folder)")
    parser.add_argument("--data-format", default="auto", choices=["auto", "llava", "messages"])
    parser.add_argument("--split", help="split of a DatasetDict (default: validation, test, eval, then train)")
    parser.add_argument("--system-prompt", help="system message for conversations without one (as in training)")
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N examples only")
    parser.add_argument("--out", help="report folder (default: <recipe output_dir>/eval, else eval_report)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="with --do-sample")
    parser.add_argument("--top-p", type=float, default=1.0, help="with --do-sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--numeric-tolerance", type=float, default=0.0, help="absolute error still counted right")
    parser.add_argument(
        "--worst", type=non_negative_int, default=10, help="at most N examples that lost points, per adapter"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="base model dtype; auto: bfloat16 on a GPU with bf16, float16 on an older GPU, float32 on CPU. "
        "The adapter's card names the dtype it was trained in.",
    )
    parser.add_argument(
        "--probe-file",
        metavar="FILE|default",
        help="also score drift from the base model's answers on prompts outside the training data: a JSON(L) "
        'file of {"question", "image"}, or "default" (generic questions about the eval images)',
    )


def _from_recipe(args: argparse.Namespace):
    """Fill what the command line left out from the recipe (parsed as training parses it); return the recipe.

    --image-dir, --system-prompt and --data-format override the recipe's, as they would for training.
    """
    from vlm_sft.training.recipe import load_recipe

    overrides = []
    for flag, value in (("image_dir", args.image_dir), ("system_prompt", args.system_prompt)):
        overrides += [f"--{flag}", value] if value else []
    overrides += ["--data_format", args.data_format] if args.data_format != "auto" else []
    recipe = load_recipe(args.recipe, overrides)
    _, training, model, vision = recipe
    args.base = args.base or model.model_name_or_path
    if model.model_revision != "main":  # ModelConfig's default: leave the adapter's recorded base revision
        args.base_revision = args.base_revision or model.model_revision
    args.image_dir, args.system_prompt, args.data_format = vision.image_dir, vision.system_prompt, vision.data_format
    if not args.adapters and training.output_dir:
        args.adapters = [training.output_dir]
    if not args.out and training.output_dir:
        args.out = str(Path(training.output_dir) / "eval")
    return recipe


def _recorded_run(adapters: list[str]) -> str | None:
    """The first adapter folder whose training recorded its held-out split (eval_split.json), if any."""
    from vlm_sft.evaluation.generate import AdapterSpec
    from vlm_sft.training.heldout import SPLIT_FILE

    for spec in adapters:
        path = AdapterSpec.parse(spec).path
        if (Path(path) / SPLIT_FILE).is_file():
            return path
    return None


def _probe(args: argparse.Namespace, eval_set, report: dict) -> dict:
    """Drift of every adapter from the base model on the probe (the default one, or --probe-file)."""
    from vlm_sft.evaluation.probe import default_probe, load_probe, probe_models

    if not any(m["kind"] == "adapter" for m in report["models"]):
        raise ValueError("--probe-file measures how adapters drift from the base model: give at least one adapter.")
    if args.probe_file == "default":
        rows = default_probe(eval_set.rows)
        if not rows:
            raise ValueError("--probe-file default asks about the eval set's images, and it has none: give a file.")
    else:
        rows = load_probe(args.probe_file, args.system_prompt)
    options = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "device": args.device}
    return probe_models(rows, report, **options)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    from vlm_sft.data.loading import DataError
    from vlm_sft.evaluation.generate import AdapterSpec, evaluate_models, format_table, load_eval_set, write_report
    from vlm_sft.training.output_dir import record_written
    from vlm_sft.training.recipe import has_eval_set, recipe_eval_set, run_eval_set

    recipe = None
    if args.recipe:
        try:
            recipe = _from_recipe(args)
        except (ValueError, OSError) as err:
            print(f"error: cannot read the recipe {args.recipe}: {err}", file=sys.stderr)
            return 2
    from_recipe = recipe is not None and not args.eval_file  # the eval set training held out
    recorded = None if args.eval_file or from_recipe else _recorded_run(args.adapters)
    if not args.eval_file and not recorded and not (from_recipe and has_eval_set(recipe)):
        print(
            "error: no eval set: give --eval-file (or --recipe with eval_file or eval_fraction, or a run folder "
            "whose training recorded its held-out split in eval_split.json).",
            file=sys.stderr,
        )
        return 2
    if not args.adapters and (args.no_base or not args.base):
        print("error: nothing to evaluate: give one or more adapters, or --base alone.", file=sys.stderr)
        return 2
    try:
        if from_recipe:
            eval_set = recipe_eval_set(recipe, limit=args.limit)
        elif recorded:
            eval_set = run_eval_set(recorded, args.limit, image_dir=args.image_dir)
        else:
            eval_set = load_eval_set(
                args.eval_file,
                args.image_dir,
                data_format=args.data_format,
                split=args.split,
                limit=args.limit,
                system_prompt=args.system_prompt,
            )
        report = evaluate_models(
            eval_set,
            [AdapterSpec.parse(a) for a in args.adapters],
            base=args.base,
            base_revision=args.base_revision,
            include_base=not args.no_base,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            tolerance=args.numeric_tolerance,
            worst=args.worst,
            device=args.device,
            dtype=args.dtype,
        )
        if args.probe_file:
            report["probe"] = _probe(args, eval_set, report)
    except (DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    paths = write_report(report, args.out or "eval_report")
    record_written(args.out or "eval_report")  # inside a run's output_dir: the run's, replaced with it
    print(format_table(report))
    if args.probe_file:
        from vlm_sft.evaluation.probe import format_probe

        section = format_probe(report["probe"])
        with paths["md"].open("a") as md:  # the same report: eval_report.md ends with the drift section
            md.write("\n" + section)
        print(section)
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0
