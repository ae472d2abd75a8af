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


# ---------------------------------------------------------------------------- image tokens


def image_token_id(processor: Any) -> int:
    """The id of the token each image is expanded into (Gemma 3's processor calls its begin-of-image marker
    `image_token`; the expanded soft token is the tokenizer's)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    name = getattr(tokenizer, "image_token", None) or getattr(processor, "image_token", None) or "<image>"
    return tokenizer.convert_tokens_to_ids(name)


def tokens_per_image(processor: Any, image: Any) -> int:
    """Language-model tokens one image becomes with this processor and its resolution settings."""
    text = "hi"  # PaliGemma has no chat template: its processor puts the image tokens before the text itself
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}, {"type": "text", "text": "hi"}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
    ids = processor(text=[text], images=[[image]])["input_ids"][0]
    return list(ids).count(image_token_id(processor))


def image_token_counts(dataset: datasets.Dataset, processor: Any) -> list[list[int]]:
    """Tokens of each image of each sample, processed one image at a time (what the model sees per image)."""
    return [[tokens_per_image(processor, image) for image in images or []] for images in dataset["images"]]


def image_token_stats(
    counts: list[list[int]],
    names: list[str],
    lengths: list[int] | None = None,
    max_length: int | None = None,
    longest: int = 5,
) -> dict:
    """Image tokens per image and per sample (p50/p90/max), the samples with the most, and how many samples are
    longer than max_length (text plus image tokens, when lengths are given)."""
    per_image = [n for sample in counts for n in sample]
    per_sample = [sum(sample) for sample in counts]
    order = sorted(range(len(counts)), key=lambda i: -(lengths[i] if lengths else per_sample[i]))
    top = [
        {"sample": names[i], "image_tokens": per_sample[i], **({"tokens": lengths[i]} if lengths else {})}
        for i in order[:longest]
        if per_sample[i] or lengths
    ]
    over = None
    if max_length is not None and lengths is not None:
        over = sum(n > max_length for n in lengths)
    return {
        "per_image": _summary(per_image, (50, 90)),
        "per_sample": _summary(per_sample, (50, 90, 99)),
        "longest_samples": top,
        "max_length": max_length,
        "over_max_length": over,
    }


def format_image_token_stats(stats: dict) -> str:
    im, sa = stats["per_image"], stats["per_sample"]
    lines = [
        f"{'image tokens/image':<20} p50 {im['p50']}, p90 {im['p90']}, min {im['min']}, max {im['max']}",
        f"{'image tokens/sample':<20} p50 {sa['p50']}, p90 {sa['p90']}, p99 {sa['p99']}, max {sa['max']}",
    ]
    if stats["max_length"] is not None and stats["over_max_length"] is not None:
        lines.append(f"{'over max_length':<20} {stats['over_max_length']} samples longer than {stats['max_length']}")
    elif stats["over_max_length"] is None and stats["max_length"] is None:
        lines.append(f"{'over max_length':<20} none: no max_length (samples are never truncated)")
    lines.append("longest samples:")
    for row in stats["longest_samples"]:
        total = f", {row['tokens']} tokens in all" if "tokens" in row else ""
        lines.append(f"  {row['sample']}: {row['image_tokens']} image tokens{total}")
    return "\n".join(lines)
