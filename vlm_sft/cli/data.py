"""`vlm-sft data`: check, describe and draft conversation data before any training.

    vlm-sft data validate examples/workbench/train.json --processor llava-hf/llava-1.5-7b-hf --max-length 2048
    vlm-sft data stats examples/workbench/train.json
    vlm-sft data init photos/ --out data/draft.json     # then replace every [ANNOTATE: ...] and validate

Exit codes: 0 valid, 1 invalid data (the report is printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vlm_sft.cli.types import positive_int
from vlm_sft.data.draft import draft_records, find_images
from vlm_sft.data.formats import FORMATS, Sample
from vlm_sft.data.loading import CheckedData, check_conversations, to_dataset
from vlm_sft.data.problems import Problem, errors, format_report
from vlm_sft.data.sources import JSON_SUFFIXES
from vlm_sft.data.stats import (
    compute_stats,
    format_image_token_stats,
    format_stats,
    image_token_counts,
    image_token_stats,
    percentile,
    token_lengths,
)
from vlm_sft.data.validation import MAX_IMAGE_PIXELS, MAX_TEXT_CHARS

_VALIDATE_DOC = (
    "Check every sample (keys, roles, turn order, replies, placeholders, image files) and list all problems. "
    "With --processor, also report each sample's token length; with --max-length, refuse longer samples."
)
_STATS_DOC = "Describe valid data: samples, exchanges, images per sample, length percentiles, answer-length histogram."
_INIT_DOC = (
    "Write a draft LLaVA file with one templated question per image and [ANNOTATE: ...] answers; "
    "validate refuses it until every placeholder is replaced by a real answer."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    validate = actions.add_parser("validate", help="Check a data file; list every problem.", description=_VALIDATE_DOC)
    _data_arguments(validate)
    validate.add_argument("--processor", metavar="ID_OR_PATH", help="Also count each sample's tokens with it.")
    validate.add_argument("--max-length", type=int, metavar="N", help="Refuse samples longer (needs --processor).")
    validate.add_argument("--all", action="store_true", help="List every problem (default: 3 of each kind).")
    validate.set_defaults(handler=_validate, parser=validate)

    stats = actions.add_parser(
        "stats", help="Samples, turns, images, lengths, answer lengths.", description=_STATS_DOC
    )
    _data_arguments(stats)
    stats.add_argument(
        "--processor",
        metavar="ID_OR_PATH",
        help="Report lengths in tokens and image tokens per image and per sample (default with --recipe: its model).",
    )
    stats.add_argument(
        "--recipe",
        type=Path,
        metavar="YAML",
        help="Apply the recipe's image-resolution keys to the processor and count samples over its max_length.",
    )
    stats.add_argument("--json", action="store_true", help="Print the numbers as JSON.")
    stats.set_defaults(handler=_stats, parser=stats)

    init = actions.add_parser("init", help="Draft a conversation file for a folder of images.", description=_INIT_DOC)
    init.add_argument("image_dir", metavar="IMAGE_DIR", help="Folder of images (searched recursively).")
    init.add_argument("--out", required=True, metavar="FILE", help="Draft to write (.json, or .jsonl).")
    init.add_argument("--limit", type=int, metavar="N", help="At most N images (the first N by name).")
    init.add_argument("--force", action="store_true", help="Overwrite FILE if it exists.")
    init.set_defaults(handler=_init, parser=init)


def run(args: argparse.Namespace) -> int:
    return args.handler(args)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help=".json/.jsonl file, save_to_disk folder or Hub dataset id.")
    parser.add_argument("--image-dir", metavar="DIR", help="Folder image paths are relative to (default: PATH's).")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="Data format (default: auto).")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help=f"Refuse larger images (default: {MAX_IMAGE_PIXELS:,}, PIL's bomb limit).",
    )
    parser.add_argument(
        "--max-text-chars",
        type=positive_int,
        default=MAX_TEXT_CHARS,
        metavar="N",
        help=f"Refuse turn texts longer than N characters (default: {MAX_TEXT_CHARS:,}).",
    )


def _usage_error(args: argparse.Namespace, message: str) -> int:
    print(f"error: {args.parser.prog}: {message}", file=sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> CheckedData | int:
    """Validate PATH, or return the usage-error exit code when the arguments themselves are wrong."""
    path = Path(args.path)
    if not path.exists() and (path.suffix.lower() in JSON_SUFFIXES or len(path.parts) != 2):
        return _usage_error(args, f"{args.path} does not exist.")
    if args.image_dir and not Path(args.image_dir).is_dir():
        return _usage_error(args, f"--image-dir {args.image_dir} is not a folder.")
    if args.max_pixels <= 0:
        return _usage_error(args, "--max-pixels must be positive.")
    return check_conversations(
        args.path,
        args.image_dir,
        data_format=args.format,
        max_pixels=args.max_pixels,
        max_text_chars=args.max_text_chars,
    )


def _describe(checked: CheckedData) -> str:
    n_images = sum(len(s.images or []) for s in checked.samples)
    folder = f"; image folder {checked.image_dir}" if checked.image_dir else ""
    return f"{checked.path}: {len(checked.samples)} samples, {n_images} images{folder}"


def _load_processor(args: argparse.Namespace):
    from transformers import AutoProcessor

    from vlm_sft.hub.availability import ModelUnavailableError, check_model_available

    try:
        check_model_available(args.processor, what="--processor")  # fail in seconds when the Hub is unreachable
        return AutoProcessor.from_pretrained(args.processor)
    except ModelUnavailableError as e:
        return f"cannot load processor: {e}"
    except Exception as e:  # noqa: BLE001 - a wrong id, an offline miss, a folder without processor files
        return f"cannot load processor {args.processor!r} ({type(e).__name__}: {e})"


def _validate(args: argparse.Namespace) -> int:
    if args.max_length is not None and (not args.processor or args.max_length <= 0):
        return _usage_error(args, "--max-length needs --processor and a positive N.")
    checked = _check(args)
    if isinstance(checked, int):
        return checked
    print(f"checked {_describe(checked)}")
    problems = checked.problems
    if checked.ok and args.processor:
        processor = _load_processor(args)
        if isinstance(processor, str):
            return _usage_error(args, processor)
        lengths = token_lengths(to_dataset(checked), processor)
        print("\n".join(_length_lines(checked, lengths, args.max_length)))
        problems += _length_problems(checked, lengths, args.max_length)
    if problems:
        print(format_report(problems, show_all=args.all))
    if errors(problems):
        print("INVALID: fix the errors above and run again; training refuses this data.")
        return 1
    print("VALID")
    return 0


def _name(sample: Sample) -> str:
    return f"sample {sample.index}" + (f" (id {sample.sample_id!r})" if sample.sample_id is not None else "")


def _length_lines(checked: CheckedData, lengths: list[int | str], max_length: int | None) -> list[str]:
    """Each sample's token length, marking those over max_length, then the distribution."""
    lines = ["token lengths (text plus image tokens, as training counts them):"]
    for sample, n in zip(checked.samples, lengths, strict=True):
        over = "  <- over --max-length" if isinstance(n, int) and max_length is not None and n > max_length else ""
        lines.append(f"  {_name(sample)}: {n if isinstance(n, str) else f'{n} tokens'}{over}")
    counted = [n for n in lengths if isinstance(n, int)]
    lines.append(f"  p50 {percentile(counted, 50)}, p90 {percentile(counted, 90)}, max {max(counted, default=0)}")
    return lines


def _length_problems(checked: CheckedData, lengths: list[int | str], max_length: int | None) -> list[Problem]:
    """Samples the processor refuses, and samples over max_length (they are never truncated)."""
    problems = []
    for sample, n in zip(checked.samples, lengths, strict=True):
        where = {
            "index": sample.index,
            "sample_id": sample.sample_id,
            "line": sample.line,
            "field": sample.conversation_key,
        }
        if isinstance(n, str):
            problems.append(
                Problem(
                    checked.path,
                    f"the processor cannot process it ({n}).",
                    "fix the sample so that the chat template and processor accept it.",
                    **where,
                )
            )
        elif max_length is not None and n > max_length:
            problems.append(
                Problem(
                    checked.path,
                    f"is {n} tokens long (text plus image tokens), over --max-length {max_length}.",
                    "shorten or split the conversation, or raise max_length; samples are never truncated (a cut "
                    "through image tokens breaks training).",
                    **where,
                )
            )
    return problems


def _stats(args: argparse.Namespace) -> int:
    checked = _check(args)
    if isinstance(checked, int):
        return checked
    if not checked.ok:
        print(format_report(checked.problems))
        print("INVALID: stats describe valid data only; run `vlm-sft data validate` and fix the errors.")
        return 1
    dataset = to_dataset(checked)
    lengths = None
    images = None
    if args.processor or args.recipe:
        loaded = _recipe_processor(args)
        if isinstance(loaded, str):
            return _usage_error(args, loaded)
        processor, max_length = loaded
        lengths = token_lengths(dataset, processor)
        refused = _length_problems(checked, lengths, None)
        if refused:
            print(format_report(refused))
            return 1
        names = [_name(sample) for sample in checked.samples]
        images = image_token_stats(image_token_counts(dataset, processor), names, lengths, max_length)
    stats = compute_stats(dataset, lengths)
    if images is not None:
        stats["image_tokens"] = images
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        extra = f"\n{format_image_token_stats(images)}" if images is not None else ""
        print(f"{_describe(checked)}\n{format_stats(stats)}{extra}")
    return 0


def _recipe_processor(args: argparse.Namespace) -> tuple[object, int | None] | str:
    """(processor with the recipe's resolution keys applied, the recipe's max_length), or why it cannot load."""
    if args.recipe is None:
        processor = _load_processor(args)
        return processor if isinstance(processor, str) else (processor, None)
    from transformers import AutoConfig, AutoProcessor

    from vlm_sft.modeling.resolution import ImageSettings, configure_processor
    from vlm_sft.training.recipe import load_recipe

    if not args.recipe.is_file():
        return f"--recipe {args.recipe} does not exist."
    try:
        _, training_args, model_args, vision = load_recipe(args.recipe)
        path = args.processor or model_args.model_name_or_path
        remote = training_args.trust_remote_code
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=remote)
        configure_processor(
            processor, AutoConfig.from_pretrained(path, trust_remote_code=remote), ImageSettings.from_args(vision)
        )
    except Exception as e:  # noqa: BLE001 - a bad recipe, an offline miss, a key the family lacks: one line
        return f"cannot load the processor for {args.recipe} ({type(e).__name__}: {' '.join(str(e).split())})"
    return processor, training_args.max_length


def _init(args: argparse.Namespace) -> int:
    image_dir, out = Path(args.image_dir), Path(args.out)
    if not image_dir.is_dir():
        return _usage_error(args, f"{image_dir} is not a folder.")
    if out.exists() and not args.force:
        return _usage_error(args, f"{out} exists; pass --force to overwrite it.")
    if args.limit is not None and args.limit <= 0:
        return _usage_error(args, "--limit must be positive.")
    images = find_images(image_dir)[: args.limit]
    if not images:
        print(
            f"error: {image_dir}: no image files found (.jpg, .png, .webp, ... anything PIL opens). "
            "Fix: put the images in that folder, or point IMAGE_DIR at the folder that holds them.",
            file=sys.stderr,
        )
        return 1
    # Paths relative to the draft's folder when the images are under it: then validate needs no --image-dir.
    out_dir, root = Path(os.path.abspath(out)).parent, Path(os.path.abspath(image_dir))
    base = out_dir if root.is_relative_to(out_dir) else root
    records = draft_records([root / p.relative_to(image_dir) for p in images], base, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".jsonl":
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        out.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    hint = "" if base == out_dir else f" --image-dir {image_dir}"
    print(
        f"wrote {len(records)} draft samples to {out}. Replace every [ANNOTATE: ...] with what you see "
        f"(edit the questions too), then run: vlm-sft data validate {out}{hint}"
    )
    return 0
