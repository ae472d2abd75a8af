"""`vlm-sft export --for vllm OUTPUT_DIR --out DIR`: an adapter split for engines that load language-model LoRA only.

    vlm-sft export --for vllm outputs/quickstart --out exports/quickstart-vllm [--eval-file eval.json]
    vllm serve exports/quickstart-vllm/base --enable-lora --lora-modules digits=exports/quickstart-vllm/adapter

Writes DIR/base (the base with the trained projector merged in), DIR/adapter (the language model's LoRA, no
modules_to_save) and DIR/export_check.json: base + adapter, loaded with transformers + PEFT, answer the check
questions greedily like the original adapter on its base, or the export fails (exit 1) and DIR is not written.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vlm_sft.cli.hub import add_check_arguments, check_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="a training run's output_dir (or adapter Hub id)")
    parser.add_argument("--for", dest="target", required=True, choices=["vllm"], help="the serving engine")
    parser.add_argument("--out", required=True, help="new folder for base/ and adapter/")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub adapter")
    parser.add_argument("--base", help="base model folder or Hub id (default: the one the adapter names)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    add_check_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "huggingface_hub", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from vlm_sft.hub.export import export_adapter
    from vlm_sft.hub.serving import MergeCheckError

    check, code = check_from_args(args)
    if code:
        return code
    try:
        out = export_adapter(
            args.output_dir,
            args.out,
            target=args.target,
            revision=args.revision,
            base=args.base,
            dtype=args.dtype,
            check=check,
        )
    except MergeCheckError as err:
        print(f"error: export check failed: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:  # an existing --out, a DoRA adapter, a missing base or adapter
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported for {args.target}: {out}/base + {out}/adapter")
    if check is not None:
        result = check.result
        print(f"export check: {result['identical']}/{result['n']} answers identical ({out}/export_check.json)")
    return 0
