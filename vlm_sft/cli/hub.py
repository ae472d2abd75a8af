"""`vlm-sft push | infer | merge`: share an adapter on the Hub, ask it about an image, merge it for deployment.

    vlm-sft push outputs/quickstart me/digits-lora [--private] [--revision BRANCH]
    vlm-sft infer --adapter me/digits-lora --image 7.png --prompt "What digit is this?"
    vlm-sft infer --adapter outputs/quickstart --image 7.png          # interactive chat about the image
    vlm-sft infer --adapter outputs/qs --image a.png --image b.png --prompt "Which is larger?"   # images in order
    vlm-sft merge --adapter me/digits-lora --out merged/ [--dtype bfloat16]

Adapters are a local folder or a Hub id (`--revision` for a branch, tag or commit); with HF_HUB_OFFLINE=1 a
Hub id is served from the HF cache. The push token comes from huggingface_hub (HF_TOKEN or `hf auth login`):
there is deliberately no --token flag, which would land in shell history and process listings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from typing import Any

COMMANDS = ("push", "infer", "merge")


def _add_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="a training run's output_dir (adapter + processor)")
    parser.add_argument("repo_id", help="namespace/name on the Hub (created if missing)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--revision", help="branch to push to (created from main if missing)")
    parser.add_argument("--base-model-id", help="the base model's Hub id, when the run used a local folder")
    parser.add_argument("--license", help="license for the card (default: the base model's, when its card says)")
    parser.add_argument("--dataset", action="append", dest="datasets", help="Hub dataset id (repeatable)")
    parser.add_argument("--description", help="what the adapter was trained for (the card's first paragraph)")
    parser.add_argument("--include-checkpoints", action="store_true", help="also upload checkpoint-* folders")
    parser.add_argument("--include", action="append", default=[], help="also upload files matching this glob")
    parser.add_argument("--commit-message", default=None)


def _add_adapter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="adapter folder or Hub id")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub adapter")
    parser.add_argument("--base", help="base model folder or Hub id (default: the one the adapter names)")


def _add_infer(parser: argparse.ArgumentParser) -> None:
    _add_adapter(parser)
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        dest="images",
        help="image file to ask about; repeat for several (given to the model in this order); none: text only",
    )
    parser.add_argument("--prompt", help="one question; without it, an interactive chat reads questions from stdin")
    parser.add_argument("--system", default=None, help="system prompt (default: the one the adapter was trained with)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto: the GPUs when there are")


def _add_merge(parser: argparse.ArgumentParser) -> None:
    _add_adapter(parser)
    parser.add_argument("--out", required=True, help="new folder for the merged model")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float16", "float32"],
        help="merge in this dtype, never 4-bit",
    )
    parser.add_argument("--base-model-id", help="the base model's Hub id for the card, when --base is a folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One module serves three commands; cli.py names each parser "vlm-sft <command>".
    command = parser.prog.split()[-1]
    if command not in COMMANDS:
        raise ValueError(f"vlm_sft.cli.hub serves {', '.join(COMMANDS)}, not {command!r}.")
    {"push": _add_push, "infer": _add_infer, "merge": _add_merge}[command](parser)
    parser.set_defaults(hub_command=command)


def answer(model: Any, processor: Any, messages: list[dict], max_new_tokens: int, images: list | None = None) -> str:
    """Greedy reply to the conversation, rendered as training rendered it (`vlm_sft.rendering.prompt_inputs`).

    `images`: the conversation's images in the order of its image parts; without it, the `"image"` values of
    those parts.
    """
    import torch

    from vlm_sft.rendering import prompt_inputs

    if images is None:
        images = [p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"] if "image" in p]
    inputs = prompt_inputs(processor, [messages], [images]).to(model.device)
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
        )
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _system_prompt(adapter_dir: Any, explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit or None  # --system "" turns the trained one off
    from vlm_sft.hub.adapters import trained_system_prompt

    return trained_system_prompt(adapter_dir)


def infer(args: argparse.Namespace) -> int:
    import torch

    from vlm_sft.hub.adapters import load_adapter_model
    from vlm_sft.rendering import load_image

    images = []
    for path in args.images:
        try:  # a missing, unreadable or non-image file: OSError; pixels as training saw them (to_rgb)
            images.append(load_image(path))
        except (OSError, ValueError) as err:
            print(f"error: cannot read the image {path}: {err}", file=sys.stderr)
            return 1
    device_map = "auto" if args.device == "auto" and torch.cuda.is_available() else None
    try:
        model, processor, adapter_dir = load_adapter_model(
            args.adapter, revision=args.revision, base=args.base, dtype=args.dtype, device_map=device_map
        )
    except (ValueError, OSError) as err:  # OSError: also a base or adapter transformers/PEFT cannot load
        print(f"error: {err}", file=sys.stderr)
        return 1
    system = _system_prompt(adapter_dir, args.system)
    messages: list[dict] = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    questions = [args.prompt] if args.prompt is not None else _stdin_questions(args.images)
    for turn, question in enumerate(questions):
        # The images go with the first question, in order; later turns keep them in the history.
        content = [{"type": "image"} for _ in images] if turn == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
        reply = answer(model, processor, messages, args.max_new_tokens, images)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        print(reply, flush=True)
    return 0


def _stdin_questions(images: list[str]) -> Iterator[str]:
    """Questions typed on stdin, until an empty line or end of input (prompts go to stderr: stdout is replies)."""
    print(f"Chat about {', '.join(images) or 'anything'} (empty line or Ctrl-D to end).", file=sys.stderr)
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline().strip()
        if not line:
            return
        yield line


def push(args: argparse.Namespace) -> int:
    from vlm_sft.hub.adapters import PushRequest, push_output_dir

    request = PushRequest(
        repo_id=args.repo_id,
        revision=args.revision,
        private=args.private,
        base_model=args.base_model_id,
        license=args.license,
        datasets=args.datasets,
        description=args.description,
        include_checkpoints=args.include_checkpoints,
        include=args.include,
    )
    try:
        url = push_output_dir(args.output_dir, request, commit_message=args.commit_message)
    except (ValueError, FileNotFoundError) as err:  # a local base path, a data file as dataset id, no adapter
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} -> {url}")
    return 0


def merge(args: argparse.Namespace) -> int:
    from vlm_sft.hub.adapters import merge_adapter

    try:
        out = merge_adapter(
            args.adapter,
            args.out,
            revision=args.revision,
            base=args.base,
            base_model_id=args.base_model_id,
            dtype=args.dtype,
        )
    except (ValueError, OSError) as err:  # OSError: an existing --out, a missing or unloadable base or adapter
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"merged model: {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "httpx2", "huggingface_hub", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return {"push": push, "infer": infer, "merge": merge}[args.hub_command](args)
