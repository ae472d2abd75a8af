"""What a validated dataset holds: samples, turns, images, lengths, and an answer-length histogram.

Token lengths come from the training collator itself, so they count exactly what training will
see: the rendered chat template, the image tokens the processor expands, the eos it adds.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import pyarrow.compute as pc

# Answer-length histogram bins in words: 1, 2-3, 4-7, ... (doubling: short labels and long essays both show).
_BIN_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def token_lengths(dataset: datasets.Dataset, processor: Any, batch_size: int = 8) -> list[int | str]:
    """Tokens per sample (text plus image tokens) as training counts them; a string says why a sample failed."""
    from vlm_sft.collator import VisionSFTCollator

    collator = VisionSFTCollator(processor)  # no max_length: we want every length, not the policy
    lengths: list[int | str] = []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        try:
            lengths.extend(collator.sample_lengths(rows))
        except Exception:  # noqa: BLE001 - find which sample the processor refuses, and say why
            lengths.extend(_one_by_one(collator, rows))
    return lengths


def _one_by_one(collator: Any, rows: list[dict]) -> list[int | str]:
    lengths: list[int | str] = []
    for row in rows:
        try:
            lengths.extend(collator.sample_lengths([row]))
        except Exception as e:  # noqa: BLE001 - processors raise many types; the message is what matters
            lengths.append(f"{type(e).__name__}: {e}")
    return lengths


def percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile (an actual value of the data, never an interpolation)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else 0


def compute_stats(dataset: datasets.Dataset, lengths: list[int] | None = None) -> dict:
    """Counts and distributions; sample length is in tokens when `lengths` is given, else in characters."""
    # Counted on the Arrow column: no image is decoded (or copied) to count them.
    n_images = pc.list_value_length(dataset.with_format("arrow")["images"]).to_pylist()
    conversations = list(dataset["messages"])
    replies = [_text(m) for conv in conversations for m in conv if m["role"] == "assistant"]
    exchanges = [sum(m["role"] == "assistant" for m in conv) for conv in conversations]
    if lengths is None:
        unit, lengths = "characters", [sum(len(_text(m)) for m in conv) for conv in conversations]
    else:
        unit = "tokens"
    answer_words = [len(r.split()) for r in replies]
    return {
        "samples": len(dataset),
        "text_only": n_images.count(0),
        "with_system_message": sum(bool(conv) and conv[0]["role"] == "system" for conv in conversations),
        "images": sum(n_images),
        "images_per_sample": {str(k): n_images.count(k) for k in sorted(set(n_images))},
        "exchanges_per_sample": _summary(exchanges, (50,)),
        "length": {"unit": unit, **_summary(lengths, (50, 90, 99))},
        "answer_words": _summary(answer_words, (50, 90)),
        "answer_histogram": _histogram(answer_words),
    }


def _text(message: dict) -> str:
    return " ".join(p["text"] for p in message["content"] if p["type"] == "text" and p["text"])


def _summary(values: list[int], ps: tuple[int, ...]) -> dict:
    return {
        "min": min(values, default=0),
        **{f"p{p}": percentile(values, p) for p in ps},
        "max": max(values, default=0),
    }


def _histogram(words: list[int]) -> list[tuple[str, int]]:
    bins = []
    for lo, hi in zip(_BIN_EDGES, (*_BIN_EDGES[1:], math.inf), strict=True):
        label = f"{lo}+" if hi == math.inf else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"
        bins.append((label, sum(lo <= w < hi for w in words)))
    while len(bins) > 1 and bins[-1][1] == 0:  # no empty tail of long-answer bins
        bins.pop()
    return bins


def format_stats(stats: dict, width: int = 40) -> str:
    """The stats as a short text report with a bar chart of answer lengths."""
    per_sample = ", ".join(f"{k}: {v}" for k, v in stats["images_per_sample"].items())
    ex, ln, aw = stats["exchanges_per_sample"], stats["length"], stats["answer_words"]
    rows = [
        (
            "samples",
            f"{stats['samples']} ({stats['text_only']} text-only, "
            f"{stats['with_system_message']} with a system message)",
        ),
        ("images", f"{stats['images']} (images per sample -> samples: {per_sample})"),
        ("exchanges/sample", f"min {ex['min']}, median {ex['p50']}, max {ex['max']} (question + reply pairs)"),
        (
            f"length ({ln['unit']})",
            f"p50 {ln['p50']}, p90 {ln['p90']}, p99 {ln['p99']}, min {ln['min']}, max {ln['max']}",
        ),
        ("answer words", f"p50 {aw['p50']}, p90 {aw['p90']}, min {aw['min']}, max {aw['max']}"),
    ]
    lines = [f"{name:<20} {value}" for name, value in rows]
    lines.append("answer length histogram (words per reply):")
    top = max((n for _, n in stats["answer_histogram"]), default=0) or 1
    for label, n in stats["answer_histogram"]:
        lines.append(f"  {label:>8} | {'#' * math.ceil(width * n / top):<{width}} {n}")
    return "\n".join(lines)
