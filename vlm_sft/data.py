"""Load users' conversations and images into a `datasets.Dataset` of `images` + `messages`.

Minimal LLaVA-format loader for the spine; the data issue extends it with every format and
full validation. The public functions and the row schema below are the contract:

    {"images": [PIL.Image, ...],
     "messages": [{"role": "user" | "assistant" | "system",
                   "content": [{"type": "image"} | {"type": "text", "text": str}, ...]}, ...]}
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets

IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """Invalid user data; the message names file, sample and field, and what to do."""


def _content_parts(text: str) -> list[dict]:
    """Split text at <image> placeholders into text and image parts, in place order."""
    parts: list[dict] = []
    for i, piece in enumerate(re.split(re.escape(IMAGE_PLACEHOLDER), text)):
        if i > 0:
            parts.append({"type": "image", "text": None})
        piece = piece.strip("\n") if i > 0 or piece.endswith("\n") else piece
        if piece.strip():
            parts.append({"type": "text", "text": piece})
    return parts


def llava_record_to_row(record: dict, image_dir: Path, system_prompt: str | None = None) -> dict:
    """One LLaVA-format record -> {"images": [paths], "messages": [...]}."""
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    for turn in record["conversations"]:
        messages.append({"role": _ROLES[turn["from"]], "content": _content_parts(turn["value"])})
    return {"images": [str(image_dir / name) for name in images], "messages": messages}


def load_conversations(path: str | Path, image_dir: str | Path | None = None, system_prompt: str | None = None):
    """Load a LLaVA JSON/JSONL file into a Dataset whose `images` column decodes to PIL images."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir else path.parent
    text = path.read_text()
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
    rows = [llava_record_to_row(r, image_dir, system_prompt) for r in records]
    features = datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "messages": datasets.List(
                {"role": datasets.Value("string"),
                 "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
            ),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def load_splits(args, seed: int = 42):
    """Train and eval splits from VisionArguments (eval from eval_file or a seeded eval_fraction)."""
    train = load_conversations(args.train_file, args.image_dir, args.system_prompt)
    if args.eval_file:
        return train, load_conversations(args.eval_file, args.image_dir, args.system_prompt)
    if args.eval_fraction:
        split = train.train_test_split(test_size=args.eval_fraction, seed=seed)
        return split["train"], split["test"]
    return train, None
