"""`vlm-sft push | infer | merge`: share an adapter on the Hub, ask it about an image, merge it for deployment.

    vlm-sft push outputs/quickstart me/digits-lora [--private] [--revision BRANCH]
    vlm-sft infer --adapter me/digits-lora --image 7.png --prompt "What digit is this?"
    vlm-sft infer --adapter outputs/quickstart --image 7.png          # questions from stdin, each on its own
    vlm-sft infer --adapter outputs/quickstart --image 7.png --chat   # a multi-turn conversation from stdin
    vlm-sft infer --adapter outputs/quickstart --file questions.jsonl --out answers.jsonl   # batched, resumable
    vlm-sft merge --adapter me/digits-lora --out merged/ [--dtype bfloat16] [--eval-file eval.json]
    vlm-sft infer --adapter outputs/qs --image a.png --image b.png --prompt "Which is larger?"   # images in order

Adapters are a local folder or a Hub id (`--revision` for a branch, tag or commit); with HF_HUB_OFFLINE=1 a
Hub id is served from the HF cache. The push token comes from huggingface_hub (HF_TOKEN or `hf auth login`):
there is deliberately no --token flag, which would land in shell history and process listings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm_sft.cli.types import positive_int

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
    parser.add_argument("--prompt", help="one question; without it, questions are read from stdin, one per line")
    parser.add_argument("--chat", action="store_true", help="with stdin questions: one multi-turn conversation")
    parser.add_argument("--file", help="questions JSONL ({image, prompt, id} per line) to answer in batches")
    parser.add_argument("--out", help="with --file: answers JSONL, appended to (a rerun skips answered ids)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="with --file")
    parser.add_argument("--system", default=None, help="system prompt (default: the one the adapter was trained with)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 on a GPU with bf16, float16 on an older GPU, float32 on CPU (as vlm-sft eval)",
    )
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
    add_check_arguments(parser)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The self-check options shared by `merge` and `export`."""
    check = parser.add_argument_group("self-check (greedy answers of the reloaded result vs the adapter on its base)")
    check.add_argument("--eval-file", help="questions to check on (default: the recipe's eval split, else synthetic)")
    check.add_argument("--image-dir", help="folder the eval file's image paths are relative to")
    check.add_argument("--recipe", help="the training recipe: check on its held-out eval split")
    check.add_argument("--check-n", type=int, default=8, help="how many eval examples to check on (default 8)")
    check.add_argument("--check-max-new-tokens", type=int, default=32)
    check.add_argument("--no-check", action="store_true", help="skip the check")


def check_from_args(args: argparse.Namespace) -> tuple[Any, int]:
    """(the GreedyAgreement of --eval-file/--recipe/--check-n, or None with --no-check; 0), or (None, exit code)."""
    if args.no_check:
        return None, 0
    from vlm_sft.data.loading import DataError
    from vlm_sft.evaluation.agreement import agreement_for

    try:
        check = agreement_for(
            args.eval_file, args.image_dir, args.recipe, n=args.check_n, max_new_tokens=args.check_max_new_tokens
        )
    except (DataError, ValueError, OSError) as err:
        print(f"error: the check's questions: {err}", file=sys.stderr)
        return None, 2 if isinstance(err, ValueError) and not isinstance(err, DataError) else 1
    return check, 0


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


def _infer_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of infer's arguments, or None."""
    if args.file:
        if not args.out:
            return "--file needs --out ANSWERS.jsonl (appended to; a rerun skips answered ids)."
        if args.images or args.prompt or args.chat:
            return "--file takes the images and prompts from the file: drop --image, --prompt and --chat."
        if args.batch_size < 1:
            return f"--batch-size must be at least 1, got {args.batch_size}."
        return None
    if args.chat and args.prompt is not None:
        return "--chat reads the conversation from stdin: drop --prompt."
    return None


def infer(args: argparse.Namespace) -> int:
    import torch

    from vlm_sft.data.validation import inspect_image
    from vlm_sft.evaluation.batch import QuestionsError, answer_file, read_questions
    from vlm_sft.hub.adapters import load_adapter_model
    from vlm_sft.rendering import load_image

    problem = _infer_usage(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    questions, images = None, []
    try:
        if args.file:
            questions = read_questions(args.file)
        for path in args.images:
            bad = inspect_image(Path(path))  # the limits of training: pixel count, regular file, bit depth
            if bad is not None:
                print(f"error: cannot read the image {path}: it {bad}", file=sys.stderr)
                return 1
            try:  # a missing, unreadable or non-image file: OSError; pixels as training saw them (to_rgb)
                images.append(load_image(path))
            except (OSError, ValueError) as err:
                print(f"error: cannot read the image {path}: {err}", file=sys.stderr)
                return 1
    except QuestionsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from vlm_sft.modeling.precision import inference_dtype

    device_map = "auto" if args.device == "auto" and torch.cuda.is_available() else None
    dtype = inference_dtype(args.dtype, "cuda" if device_map else "cpu")
    print(f"infer: base model in {dtype} on {'the GPUs' if device_map else 'CPU'}", file=sys.stderr)
    try:
        model, processor, adapter_dir = load_adapter_model(
            args.adapter, revision=args.revision, base=args.base, dtype=dtype, device_map=device_map
        )
    except (ValueError, OSError) as err:  # OSError: also a base or adapter transformers/PEFT cannot load
        print(f"error: {err}", file=sys.stderr)
        return 1
    system = _system_prompt(adapter_dir, args.system)
    if args.file:
        try:
            answered, skipped = answer_file(
                model,
                processor,
                questions,
                args.out,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                system_prompt=system,
            )
        except (QuestionsError, OSError) as err:  # the answers so far are kept: a rerun continues
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"answered {answered} questions ({skipped} already in {args.out}): {args.out}")
        return 0
    _converse(model, processor, images, args, system)
    return 0


def _converse(model: Any, processor: Any, images: list, args: argparse.Namespace, system: str | None) -> None:
    """Answer --prompt, or stdin's questions: each on its own, or (--chat) as one conversation."""
    opening: list[dict] = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    messages = list(opening)
    questions = [args.prompt] if args.prompt is not None else _stdin_questions(args.images, args.chat)
    for question in questions:
        if not args.chat:
            messages = list(opening)  # a fresh question about the images each time
        # The images go with the first question, in order; later turns keep them in the history.
        first = not any(m["role"] == "user" for m in messages)
        content = [{"type": "image"} for _ in images] if first else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
        reply = answer(model, processor, messages, args.max_new_tokens, images)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        print(reply, flush=True)


def _stdin_questions(images: list[str], chat: bool) -> Iterator[str]:
    """Questions typed on stdin, until an empty line or end of input (prompts go to stderr: stdout is replies)."""
    what = "A conversation" if chat else "Questions, each on its own,"
    print(f"{what} about {', '.join(images) or 'no image'} (empty line or Ctrl-D to end).", file=sys.stderr)
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
    except Exception as err:  # noqa: BLE001 - the Hub unreachable (connection errors) or refusing (HTTP errors)
        from huggingface_hub import constants

        print(
            f"error: push of {args.output_dir} to {args.repo_id} at {constants.ENDPOINT} failed "
            f"({type(err).__name__}: {err}). Nothing was changed locally; check the network and the token "
            "(HF_TOKEN or `hf auth login`), then run the same command again.",
            file=sys.stderr,
        )
        return 1
    print(f"pushed {args.output_dir} -> {url}")
    return 0


def merge(args: argparse.Namespace) -> int:
    from vlm_sft.hub.adapters import merge_adapter
    from vlm_sft.hub.serving import MergeCheckError

    check, code = check_from_args(args)
    if code:
        return code
    try:
        out = merge_adapter(
            args.adapter,
            args.out,
            revision=args.revision,
            base=args.base,
            base_model_id=args.base_model_id,
            dtype=args.dtype,
            check=check,
        )
    except MergeCheckError as err:
        print(f"error: merge check failed: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:  # OSError: an existing --out, a missing or unloadable base or adapter
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"merged model: {out} ({args.dtype})")
    if check is not None:
        result = check.result
        print(f"merge check: {result['identical']}/{result['n']} answers identical ({out}/merge_check.json)")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "httpx2", "huggingface_hub", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return {"push": push, "infer": infer, "merge": merge}[args.hub_command](args)
