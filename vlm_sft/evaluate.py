"""Honest evaluation: answer held-out questions by generation with the base model and with an adapter, and score.

Batched greedy generation with left padding; the prompt is the conversation up to its last
assistant reply, rendered with the generation prompt; the reference is that reply.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterable
from typing import Any

import torch

from vlm_sft.collator import _clean_messages, _reply_text

logger = logging.getLogger(__name__)


def normalize(text: str) -> str:
    """Case, surrounding whitespace and trailing punctuation do not count."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(string.punctuation + " ")


def split_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """(conversation before the last assistant reply, that reply)."""
    messages = _clean_messages(messages)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], _reply_text(messages[last])


@torch.no_grad()
def generate_answers(
    model: Any, processor: Any, rows: Iterable[dict], *, batch_size: int = 16, max_new_tokens: int = 16
) -> list[str]:
    """Greedy answers to each row's last question."""
    model.eval()
    rows = list(rows)
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts = [split_prompt(r["messages"])[0] for r in batch]
        texts = processor.apply_chat_template(prompts, tokenize=False, add_generation_prompt=True)
        bos = processor.tokenizer.bos_token
        images = [img for r in batch for img in (r.get("images") or [])]
        inputs = processor(
            text=texts,
            images=images or None,
            padding=True,
            padding_side="left",  # generation continues every row from its last token
            add_special_tokens=not (bos and all(t.startswith(bos) for t in texts)),
            return_tensors="pt",
        ).to(model.device)
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        answers.extend(t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


def exact_match_accuracy(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to the reference after normalisation."""
    if not references:
        return 0.0
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / len(references)
