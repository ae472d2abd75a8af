"""Sample lengths (text plus image tokens) computed once with the processor, cached, and used to group batches.

A sample's length is what the model sees: the collator's rendering (chat template, added eos) run
through the processor, image placeholders expanded (576 tokens per LLaVA-1.5 image; Qwen-VL and
Idefics depend on the image size). That costs a processor pass over the data, so the lengths are
cached on disk, keyed by the dataset's fingerprint (its rows), the image files' sizes and times,
and everything about the processor and collator that changes a length.

Grouping uses transformers' own sampler: `train_sampling_strategy: group_by_length` (or
`batch_rebalance`) reads the lengths from the column named by `length_column_name`. TRL's vision
path keeps only its signature columns (`messages`, `images`, ...) when `remove_unused_columns` is on,
which drops that column before the sampler is built and makes the sampler fail looking for
`input_ids`; so grouping turns `remove_unused_columns` off (our collator ignores extra keys).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc
import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

logger = logging.getLogger(__name__)

# Bump when the way a length is computed changes, so old cache entries are not reused.
LENGTHS_VERSION = 1
GROUPING_STRATEGIES = ("group_by_length", "batch_rebalance")


def cache_dir() -> Path:
    """`$VLM_SFT_CACHE/lengths`, default `~/.cache/vlm_sft/lengths`."""
    root = os.environ.get("VLM_SFT_CACHE") or Path.home() / ".cache" / "vlm_sft"
    return Path(root) / "lengths"


def _sha(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def processor_key(collator: Any) -> str:
    """Everything about the processor and collator that changes a sample's length."""
    processor, tokenizer = collator.processor, collator.tokenizer
    try:
        processor_json = processor.to_json_string()  # image processor settings, chat template, ...
    except (AttributeError, TypeError, ValueError):
        processor_json = repr(sorted(vars(processor)))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _sha(
        LENGTHS_VERSION,
        type(processor).__name__,
        processor_json,
        vocabulary,
        getattr(processor, "chat_template", None),
        collator.train_on,
        collator.add_missing_eos,
        collator.uses_suffix,
    )


def images_key(dataset: datasets.Dataset) -> str:
    """Sizes and modification times of the image files a dataset points to (embedded bytes are in its fingerprint).

    Read from the Arrow column (`list<struct<bytes, path>>`) without decoding images or copying embedded bytes;
    it covers every row of the underlying table, a superset of a `select`ed view's rows.
    """
    if "images" not in dataset.column_names:
        return ""
    refs = pc.list_flatten(dataset.data.column("images"))
    paths = pc.struct_field(refs, "path").to_pylist()
    embedded = pc.is_valid(pc.struct_field(refs, "bytes")).to_pylist()
    stats = []
    for path, has_bytes in zip(paths, embedded, strict=True):
        if path and not has_bytes:
            st = os.stat(path)
            stats.append((path, st.st_size, st.st_mtime_ns))
    return _sha(stats)


def _cache_path(dataset: datasets.Dataset, collator: Any) -> Path:
    return cache_dir() / f"{_sha(dataset._fingerprint, processor_key(collator), images_key(dataset))}.json"


def store_lengths(dataset: datasets.Dataset, collator: Any, lengths: Sequence[int]) -> None:
    """Cache lengths already known (e.g. of the rows kept after dropping long ones); atomic write."""
    path = _cache_path(dataset, collator)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps([int(n) for n in lengths]))
    os.replace(tmp, path)  # a reader never sees half a file


def sample_lengths(dataset: datasets.Dataset, collator: Any, batch_size: int = 32, cache: bool = True) -> list[int]:
    """Length of every sample (text plus image tokens), from the cache or computed once and cached.

    In a multi-process run the main process computes and writes the cache first; the others read it.
    """
    from accelerate import PartialState

    path = _cache_path(dataset, collator)
    with PartialState().main_process_first():
        if cache and path.is_file():
            lengths = json.loads(path.read_text())
            if len(lengths) == len(dataset):
                logger.info("Sample lengths of %d rows read from %s", len(lengths), path)
                return lengths
        lengths = []
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            lengths.extend(int(n) for n in collator.sample_lengths(rows))
        if cache and PartialState().is_main_process:
            store_lengths(dataset, collator, lengths)
        return lengths


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of the token slots in the batches (consecutive `batch_size` slices of `order`) that are padding."""
    slots = padding = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        slots += max(batch) * len(batch)
        padding += max(batch) * len(batch) - sum(batch)
    return padding / slots if slots else 0.0


def padding_with_and_without_grouping(
    lengths: Sequence[int], per_device_batch_size: int, gradient_accumulation_steps: int = 1, seed: int = 0
) -> tuple[float, float]:
    """(padding fraction in random batches, with transformers' length grouping), on per-device batches.

    The grouped order is the one `LengthGroupedSampler` draws (mega-batches sorted by length, the sampler's
    batch being per-device batch x accumulation); each per-device batch is a consecutive slice of it.
    """
    generator = torch.Generator().manual_seed(seed)
    random_order = torch.randperm(len(lengths), generator=generator).tolist()
    grouped = get_length_grouped_indices(
        list(lengths), per_device_batch_size * gradient_accumulation_steps, generator=generator
    )
    return (
        padding_fraction(lengths, random_order, per_device_batch_size),
        padding_fraction(lengths, grouped, per_device_batch_size),
    )


def with_length_column(dataset: datasets.Dataset | None, lengths: list[int], name: str) -> datasets.Dataset | None:
    if dataset is None:
        return None
    if name in dataset.column_names:
        dataset = dataset.remove_columns(name)
    return dataset.add_column(name, lengths)


def prepare_length_grouping(
    train_ds: datasets.Dataset, eval_ds: datasets.Dataset | None, collator: Any, training_args: Any
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """When the recipe groups by length: add the lengths column to both splits, keep it, log the padding saved."""
    if training_args.train_sampling_strategy not in GROUPING_STRATEGIES:
        return train_ds, eval_ds
    name = training_args.length_column_name
    lengths = sample_lengths(train_ds, collator)
    train_ds = with_length_column(train_ds, lengths, name)
    if eval_ds is not None:
        eval_ds = with_length_column(eval_ds, sample_lengths(eval_ds, collator), name)
    if training_args.remove_unused_columns:
        logger.info("remove_unused_columns turned off: it would drop the %r column before batches are grouped.", name)
        training_args.remove_unused_columns = False
    batch, accumulation = training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps
    random_pad, grouped_pad = padding_with_and_without_grouping(lengths, batch, accumulation, training_args.seed)
    logger.info(
        "Padding in batches of %d: %.1f%% of the tokens in random batches, %.1f%% in group_by_length's order "
        "(train_sampling_strategy=%s; lengths %d..%d tokens).",
        batch,
        100 * random_pad,
        100 * grouped_pad,
        training_args.train_sampling_strategy,
        min(lengths),
        max(lengths),
    )
    return train_ds, eval_ds
