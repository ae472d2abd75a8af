"""Load users' conversations and images into a validated `datasets.Dataset` of `images` + `messages`.

Accepted: LLaVA JSON/JSONL (`conversations` with `<image>` placeholders), messages JSON/JSONL as TRL
and OpenAI write them, a `save_to_disk` folder, or a Hub dataset id from the local cache. Every
problem in the data is found before anything is returned, and `DataError` lists them all, each
naming the file, the sample (index and id), the field, what was expected and how to fix it.

The row schema is the contract with the collator:

    {"id": str | None,                               # the record's id; the collator and TRL ignore it
     "images": [PIL.Image, ...],                     # datasets.List(datasets.Image())
     "messages": [{"role": "user" | "assistant" | "system",
                   "content": [{"type": "image", "text": None} | {"type": "text", "text": str}, ...]}, ...]}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets

from vlm_sft.data.formats import FORMATS, IMAGE_PLACEHOLDER, Sample, normalize
from vlm_sft.data.problems import Problem, errors, format_report, warnings_of
from vlm_sft.data.sources import read_source
from vlm_sft.data.validation import (
    MAX_IMAGE_PIXELS,
    MAX_TEXT_CHARS,
    check_images,
    check_sample,
    mark_duplicate_ids,
    mark_duplicates,
    resolve_image,
)

if TYPE_CHECKING:
    from vlm_sft.training.config import VisionArguments

logger = logging.getLogger(__name__)

# The held-out split of a DatasetDict given as eval_file, in order of preference.
EVAL_SPLITS = ("validation", "test", "eval")

__all__ = [
    "FEATURES",
    "IMAGE_PLACEHOLDER",
    "CheckedData",
    "DataError",
    "check_conversations",
    "load_conversations",
    "load_splits",
    "to_dataset",
]

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # the record's id (None without one), so later errors can name it
        "images": datasets.List(datasets.Image()),
        "messages": datasets.List(
            {
                "role": datasets.Value("string"),
                "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
            }
        ),
    }
)


class DataError(ValueError):
    """Invalid user data; the message names file, sample and field, and what to do. `problems` lists them."""

    def __init__(self, problems: list[Problem] | str) -> None:
        self.problems = [] if isinstance(problems, str) else list(problems)
        super().__init__(problems if isinstance(problems, str) else "invalid data:\n" + format_report(problems))


@dataclass
class CheckedData:
    """One file (or dataset) read and validated: its samples, every problem, and the image folder used."""

    path: str
    image_dir: Path | None
    samples: list[Sample]
    file_problems: list[Problem]  # syntax errors, a missing file: problems not inside one parsed sample

    @property
    def problems(self) -> list[Problem]:
        return self.file_problems + [p for s in self.samples for p in s.problems]

    @property
    def ok(self) -> bool:
        return not errors(self.problems)


def check_conversations(
    path: str | Path,
    image_dir: str | Path | None = None,
    *,
    data_format: str = "auto",
    max_pixels: int = MAX_IMAGE_PIXELS,
    split: str | tuple[str, ...] | None = None,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> CheckedData:
    """Read and validate every sample without raising for bad data: all problems are in the result.

    Args:
        path: A .json/.jsonl file, a `save_to_disk` folder, or a Hub dataset id (local cache when offline).
        image_dir: Folder that image paths are relative to (default: the data file's folder).
        data_format: `auto` (per sample), `llava` or `messages`.
        max_pixels: Images with more pixels are refused (decompression bombs).
        split: The split of a DatasetDict folder or Hub dataset, or candidates tried in order (default `train`).
        max_text_chars: Longer turn texts are refused (they exhaust the tokenizer's memory).
    """
    if data_format not in FORMATS:
        raise ValueError(f"data_format must be one of {', '.join(FORMATS)}; got {data_format!r}.")
    source = read_source(path, split=split)
    folder = Path(image_dir) if image_dir else source.base_dir
    samples = [normalize(record, source.name, data_format, trusted=source.trusted) for record in source.records]
    for sample in samples:
        check_sample(sample, max_text_chars)
    check_images(samples, folder, max_pixels)
    mark_duplicates(samples)
    mark_duplicate_ids(samples)
    if not samples and not source.problems:
        source.problems.append(
            Problem(source.name, "holds no samples.", "add samples (see examples/workbench/train.json).")
        )
    return CheckedData(source.name, folder, samples, source.problems)


def to_dataset(checked: CheckedData, system_prompt: str | None = None) -> datasets.Dataset:
    """Rows in the contract's schema; the recipe's system prompt goes to samples that have none of their own."""
    if not checked.ok:
        raise DataError(checked.problems)
    rows = []
    for sample in checked.samples:
        messages = [{"role": m["role"], "content": m["content"]} for m in sample.messages]
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
        images = [_encodable(resolve_image(ref, checked.image_dir)) for ref in sample.images]
        rows.append({"id": sample.sample_id, "images": images, "messages": messages})
    return datasets.Dataset.from_list(rows, features=FEATURES)


def _encodable(target: Path | bytes) -> str | dict:
    """What `datasets.Image` stores: a path (decoded lazily, on access) or the embedded bytes."""
    return str(target) if isinstance(target, Path) else {"bytes": target, "path": None}


def load_conversations(
    path: str | Path,
    image_dir: str | Path | None = None,
    system_prompt: str | None = None,
    **kwargs,
) -> datasets.Dataset:
    """A validated Dataset whose `images` decode to PIL images; raises DataError listing every problem.

    `kwargs` go to `check_conversations` (data_format, max_pixels, split).
    """
    checked = check_conversations(path, image_dir, **kwargs)
    _raise_or_warn([checked])
    return to_dataset(checked, system_prompt)


def load_splits(
    args: VisionArguments, *, seed: int = 42, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train and eval Datasets from the recipe: eval from `eval_file`, else a seeded `eval_fraction`.

    Both files are validated before either is returned, and DataError lists the problems of both.
    """
    if not args.train_file:
        raise DataError("train_file is not set: give the training conversations (e.g. train_file: data/train.json).")
    options = {
        "data_format": args.data_format,
        "max_pixels": max_pixels,
        "max_text_chars": getattr(args, "max_text_chars", MAX_TEXT_CHARS),
    }
    train = check_conversations(args.train_file, args.image_dir, **options)
    checked = [train]
    if args.eval_file:
        evaluation = check_conversations(args.eval_file, args.image_dir, split=EVAL_SPLITS, **options)
        mark_duplicates(evaluation.samples, earlier=train.samples)  # train/eval leakage is worth a warning
        checked.append(evaluation)
    _raise_or_warn(checked)
    train_ds = to_dataset(train, args.system_prompt)
    if args.eval_file:
        if args.eval_fraction:
            logger.warning("eval_file is set, so eval_fraction=%s is ignored.", args.eval_fraction)
        return train_ds, to_dataset(checked[1], args.system_prompt)
    if not args.eval_fraction:
        return train_ds, None
    try:
        split = train_ds.train_test_split(test_size=args.eval_fraction, seed=seed)
    except ValueError as e:  # too few samples for this fraction: one side would be empty
        raise DataError(
            f"{train.path}: eval_fraction={args.eval_fraction} cannot split {len(train_ds)} samples "
            f"({e}). Fix: change eval_fraction, or give an eval_file."
        ) from e
    return split["train"], split["test"]


def _raise_or_warn(checked: list[CheckedData]) -> None:
    problems = [p for c in checked for p in c.problems]
    if errors(problems):
        raise DataError(problems)
    if warnings_of(problems):  # grouped by kind: 2,000 duplicates are one warning with a count
        logger.warning("%s", format_report(warnings_of(problems)))
