"""The eval split a run held out, recorded in its output_dir, so every later score uses exactly those examples.

Training writes `eval_split.json` next to training_summary.json: the split's parameters after command-line
overrides (data files, eval_fraction, seed, format, system prompt, max_length, too_long), the rows the length
policy dropped, and a key per kept row. `vlm-sft eval OUTPUT` and `--recipe` rebuild the split from that record,
check every key, and refuse (never guess) when a recipe disagrees with the run or the data changed since.

    {"parameters": {"train_file": "/abs/train.json", "eval_fraction": 0.1, "seed": 7, ...},
     "split_size": 150, "dropped": [{"position": 3, "id": "s12", "tokens": 900}],
     "kept": [0, 1, 2, 4, ...], "keys": ["9f2c...", ...]}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SPLIT_FILE = "eval_split.json"
_VERSION = 1


class HeldOutMismatchError(ValueError):
    """A recipe (or a data file) that does not describe the eval split the run held out."""


def _resolved(path: str | None) -> str | None:
    """A local path made absolute (so a later command from another folder finds it); a Hub id as given."""
    if not path:
        return None
    return str(Path(path).resolve()) if Path(path).exists() else path


def split_parameters(training_args: Any, vision: Any) -> dict:
    """What decides which rows are held out: the data, the split, and the length policy (after overrides)."""
    by_fraction = not vision.eval_file and bool(vision.eval_fraction)
    return {
        "train_file": _resolved(vision.train_file) if by_fraction else None,
        "eval_file": _resolved(vision.eval_file),
        "eval_fraction": vision.eval_fraction if by_fraction else None,
        "seed": training_args.seed if by_fraction else None,  # the seed only matters for a fraction
        "data_format": vision.data_format,
        "system_prompt": vision.system_prompt,
        "max_length": training_args.max_length,
        "too_long": vision.too_long if training_args.max_length else None,
    }


def row_keys(dataset: Any) -> list[str]:
    """A short hash of each row's id and conversation (images are not decoded; their paths may move)."""
    columns = [c for c in ("id", "messages") if c in dataset.column_names]
    table = dataset.select_columns(columns).with_format("arrow")[:].to_pylist()
    return [hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16] for row in table]


def build_record(training_args: Any, vision: Any, split: Any, dropped: dict[int, int]) -> dict:
    """The record of `split` (the eval Dataset before the length policy) minus `dropped` ({position: tokens})."""
    keys = row_keys(split)
    ids = split.select_columns("id")["id"] if "id" in split.column_names else [None] * len(split)
    kept = [i for i in range(len(split)) if i not in dropped]
    return {
        "version": _VERSION,
        "parameters": split_parameters(training_args, vision),
        "image_dir": _resolved(vision.image_dir),
        "split_size": len(split),
        "dropped": [{"position": i, "id": ids[i], "tokens": n} for i, n in sorted(dropped.items())],
        "kept": kept,
        "keys": [keys[i] for i in kept],
    }


def write_record(record: dict, output_dir: str | Path) -> Path:
    path = Path(output_dir) / SPLIT_FILE
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path


def read_record(output_dir: str | Path) -> dict | None:
    """The run's record, or None when it has none (a run from before records, or an adapter from elsewhere)."""
    path = Path(output_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("version") != _VERSION:
            raise ValueError(f"version {record.get('version')!r}, expected {_VERSION}")
        return record
    except (ValueError, AttributeError) as err:
        raise HeldOutMismatchError(
            f"{path}: not a readable eval split record ({err}). Retrain, or give --eval-file."
        ) from err


def check_recipe(record: dict, training_args: Any, vision: Any, output_dir: str | Path) -> None:
    """Refuse a recipe whose split differs from the one the run in output_dir held out, naming each key."""
    ours = split_parameters(training_args, vision)
    theirs = record["parameters"]
    diffs = [f"{k}: recipe {ours[k]!r}, run {theirs.get(k)!r}" for k in ours if ours[k] != theirs.get(k)]
    if diffs:
        raise HeldOutMismatchError(
            f"the recipe does not describe the eval split {output_dir} held out ({Path(output_dir) / SPLIT_FILE}): "
            + "; ".join(diffs)
            + f". Score the run's own held-out set with `vlm-sft eval {output_dir}`, or make the recipe match."
        )


def held_out_dataset(record: dict, output_dir: str | Path, image_dir: str | None = None) -> Any:
    """The Dataset of exactly the rows the run held out and kept, rebuilt from the record and checked row by row."""
    from vlm_sft.data.loading import EVAL_SPLITS, load_conversations, load_splits
    from vlm_sft.training.config import VisionArguments

    p = record["parameters"]
    image_dir = image_dir or record.get("image_dir")
    if p["eval_file"]:
        split = load_conversations(
            p["eval_file"], image_dir, p["system_prompt"], data_format=p["data_format"], split=EVAL_SPLITS
        )
    else:
        vision = VisionArguments(
            train_file=p["train_file"],
            image_dir=image_dir,
            data_format=p["data_format"],
            eval_fraction=p["eval_fraction"],
            system_prompt=p["system_prompt"],
        )
        split = load_splits(vision, seed=p["seed"])[1]
    where = Path(output_dir) / SPLIT_FILE
    if split is None or len(split) != record["split_size"]:
        raise HeldOutMismatchError(
            f"{where}: the run held out {record['split_size']} rows, the data now gives "
            f"{0 if split is None else len(split)}: the data changed since training. Retrain, or give --eval-file."
        )
    kept = split.select(record["kept"])
    changed = [i for i, (a, b) in enumerate(zip(row_keys(kept), record["keys"], strict=True)) if a != b]
    if changed:
        raise HeldOutMismatchError(
            f"{where}: {len(changed)} held-out rows differ from the ones the run held out (first: #{changed[0]}): "
            "the data changed since training. Retrain, or give --eval-file."
        )
    return kept


def describe(record: dict, output_dir: str | Path) -> str:
    """How the report names the eval set: the record, the split and what the length policy dropped."""
    p = record["parameters"]
    split = p["eval_file"] or f"{p['train_file']} (eval_fraction={p['eval_fraction']}, seed={p['seed']})"
    text = f"{split}, as held out by {output_dir} ({SPLIT_FILE})"
    if record["dropped"]:
        text += (
            f"; {len(record['dropped'])} of {record['split_size']} dropped by too_long: drop "
            f"(max_length={p['max_length']}), as in training"
        )
    return text
