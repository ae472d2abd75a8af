"""The vision collator: model inputs for a batch of `{"images", "messages"}` rows, loss on assistant replies only.

Why our own: TRL's `DataCollatorForVisionLanguageModeling` masks only with `{% generation %}` markers,
which few real chat templates have (llava-1.5's has none and renders no end-of-turn token). Ours
works on any template whose rendering of a conversation prefix is a prefix of the whole:

1. render with `vlm_sft.rendering` (the one rendering shared with every prompt builder): the
   processor gets the training template first, which renders the tokenizer's eos after every reply
   where the model's own template renders nothing there (LLaVA itself was trained with `</s>` after
   each reply), and is the template saved with the adapter;
2. render the conversation, and each assistant turn's prompt (`add_generation_prompt=True`) and
   turn-through text; the reply's characters are the difference (checked to be prefixes);
3. one processor call for the batch (image processing, image-token expansion, tokenization) with
   character offsets and the processor's own record of where it expanded image placeholders;
4. a token is trained when it ends inside a reply span (a token that merges the role header's
   space with the reply's first word is trained; one that merges the reply's last character with
   the next turn is not), never when it is an image token or padding.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature

from vlm_sft.rendering import (
    clean_messages,
    encode,
    nested_images,
    render,
    reply_text,
    use_training_template,
    uses_prefix_suffix,
)

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Keys the processor returns for bookkeeping only; never model inputs.
_BOOKKEEPING = ("offset_mapping", "text_replacement_offsets")
# Attribute names processors use for the token ids that stand for image content.
_IMAGE_TOKEN_ATTRS = (
    "image_token",
    "boi_token",
    "eoi_token",
    "image_start_token",
    "image_end_token",
    "fake_image_token",
    "global_image_token",
    "vision_start_token",
    "vision_end_token",
    "video_token",
)


class TemplateError(ValueError):
    """The chat template cannot be used for assistant-only masking (prefix property broken)."""


class SampleTooLongError(ValueError):
    """A sample does not fit `max_length` and the policy is `error`."""




def image_token_ids(processor: Any) -> list[int]:
    """Every token id the processor uses for image content (placeholder, soft tokens, begin/end markers)."""
    tokenizer = processor.tokenizer
    ids = set()
    for attr in _IMAGE_TOKEN_ATTRS:
        token = getattr(processor, attr, None) or getattr(tokenizer, attr, None)
        if isinstance(token, str):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
    for attr in ("image_token_id", "image_token_index", "boi_token_id", "eoi_token_id", "video_token_id"):
        value = getattr(processor, attr, None)
        if isinstance(value, int):
            ids.add(value)
    # Idefics3 / SmolVLM tile markers (<row_1_col_1>, ...) are image content too.
    ids.update(i for t, i in tokenizer.get_vocab().items() if t.startswith("<row_") and t.endswith(">"))
    return sorted(ids)


class VisionSFTCollator:
    """Collate `{"images": [PIL], "messages": [...]}` rows into model inputs with assistant-only `labels`.

    Args:
        processor: The model's processor (tokenizer + image processor + chat template).
        max_length: Longest allowed sample in tokens, text plus image tokens. Never truncates.
        too_long: `error` (raise, naming the sample and its length) or `drop` (skip it, log and count).
        train_on: `all_assistant_turns` or `last_assistant_turn`.
        pad_to_multiple_of: Pad the batch length to a multiple of this.
        add_missing_eos: Train on the eos token after replies the template ends with nothing (the processor
            gets the training template, `vlm_sft.rendering.use_training_template`, which renders it).
    """

    def __init__(
        self,
        processor: Any,
        max_length: int | None = None,
        too_long: str = "error",
        train_on: str = "all_assistant_turns",
        pad_to_multiple_of: int | None = None,
        add_missing_eos: bool = True,
    ) -> None:
        if too_long not in ("error", "drop"):
            raise ValueError(f"too_long must be 'error' or 'drop', got {too_long!r}")
        if train_on not in ("all_assistant_turns", "last_assistant_turn"):
            raise ValueError(f"train_on must be 'all_assistant_turns' or 'last_assistant_turn', got {train_on!r}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.too_long = too_long
        self.train_on = train_on
        self.pad_to_multiple_of = pad_to_multiple_of
        self.add_missing_eos = add_missing_eos and self.tokenizer.eos_token is not None
        self.image_token_ids = torch.tensor(image_token_ids(processor), dtype=torch.long)
        self.dropped = 0  # samples dropped by the `drop` policy so far
        # The processor renders (and is saved with) the training template from here on.
        use_training_template(processor, eos=self.add_missing_eos)
        self.uses_suffix = uses_prefix_suffix(processor)
        if getattr(processor, "chat_template", None) is None and not self.uses_suffix:
            raise TemplateError(
                f"{type(processor).__name__} has no chat template. Set one (processor.chat_template = ...) "
                "or load a processor that ships one."
            )

    # ---------------------------------------------------------------- rendering
    def _render(self, conversations: list[list[dict]], add_generation_prompt: bool) -> list[str]:
        return render(self.processor, conversations, add_generation_prompt=add_generation_prompt)

    def render_with_spans(self, batch_messages: list[list[dict]]) -> tuple[list[str], list[list[tuple[int, int]]]]:
        """Render each conversation and return the character spans of the replies to train on."""
        fulls = self._render(batch_messages, add_generation_prompt=False)
        # One batched render for all prompts and one for all turn-through prefixes of the batch.
        turns = []  # (sample, assistant index)
        for b, messages in enumerate(batch_messages):
            idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            if self.train_on == "last_assistant_turn":
                idx = idx[-1:]
            turns.extend((b, i) for i in idx)
        prompts = self._render([batch_messages[b][:i] for b, i in turns], add_generation_prompt=True)
        throughs = self._render([batch_messages[b][: i + 1] for b, i in turns], add_generation_prompt=False)

        spans: list[list[tuple[int, int]]] = [[] for _ in batch_messages]
        for (b, i), prompt, through in zip(turns, prompts, throughs, strict=True):
            full = fulls[b]
            if not (full.startswith(through) and through.startswith(prompt)):
                raise TemplateError(
                    f"The chat template does not render conversation prefixes as prefixes of the whole "
                    f"(sample {b}, assistant turn {i}); assistant-only masking needs that property.\n"
                    f"  prompt for the turn: {prompt[-80:]!r}\n  turn-through text:   {through[-80:]!r}"
                )
            start, end = len(prompt), len(through)
            # A space after the end-of-turn belongs to the next turn's first word in SentencePiece/BPE
            # vocabularies; a newline is the template's own line break and ends the turn (as in
            # TRL's *_training.jinja templates: Qwen/Gemma/Idefics train "\n", LLaVA-NeXT not " ").
            while end > start and full[end - 1] in " \t":
                end -= 1
            spans[b].append((start, end))
        return list(fulls), spans

    # ---------------------------------------------------------------- collation
    def _process(self, texts: list[str], images: list | None, **kwargs: Any) -> dict:
        return encode(
            self.processor, texts, images, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of, **kwargs
        )

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self._collate_prefix_suffix(rows) if self.uses_suffix else self._collate(rows)
        kept = self._apply_length_policy(rows, batch["attention_mask"].sum(dim=1).tolist())
        return batch if len(kept) == len(rows) else self(kept)

    def _collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch_messages = [clean_messages(r["messages"]) for r in rows]
        texts, spans = self.render_with_spans(batch_messages)
        # Tensors are made after the bookkeeping keys are popped: transformers converts a nested
        # offset_mapping element by element in Python, a fifth of the collator's time on long samples.
        batch = self._process(
            texts,
            nested_images(rows),
            return_tensors=None,
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
        offsets = np.asarray(batch.pop("offset_mapping"), dtype=np.int64)
        replacements = batch.pop("text_replacement_offsets", None) or [[] for _ in rows]
        batch = BatchFeature(dict(batch), tensor_type="pt")
        batch["labels"] = self._labels(batch["input_ids"], batch["attention_mask"], offsets, spans, replacements)
        return dict(batch)

    def _labels(self, input_ids, attention_mask, offsets, spans, replacements) -> torch.Tensor:
        starts, ends = offsets[..., 0], offsets[..., 1]
        trained = np.zeros(input_ids.shape, dtype=bool)
        for b, sample_spans in enumerate(spans):
            if not sample_spans:
                continue
            span = np.asarray(sample_spans, dtype=np.int64)
            # Shift the reply spans by the characters the processor added before them when it
            # expanded image placeholders (the offsets refer to the expanded text).
            placeholder_ends = np.asarray([r["span"][1] for r in replacements[b]], dtype=np.int64)
            # new_span is in expanded-text coordinates, so this difference is already cumulative.
            gained = np.asarray([0] + [r["new_span"][1] - r["span"][1] for r in replacements[b]], dtype=np.int64)
            span = span + gained[np.searchsorted(placeholder_ends, span, side="right")]
            tok_end = ends[b][:, None]
            inside = (tok_end > span[:, 0]) & (tok_end <= span[:, 1])
            trained[b] = inside.any(axis=1) & (ends[b] > starts[b])  # zero-width tokens are added specials
        labels = torch.where(torch.from_numpy(trained), input_ids, IGNORE_INDEX)
        labels[attention_mask == 0] = IGNORE_INDEX
        labels[torch.isin(input_ids, self.image_token_ids)] = IGNORE_INDEX
        return labels

    def _collate_prefix_suffix(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """PaliGemma: no chat template; the processor builds labels from a prefix (prompt) and suffix (answer)."""
        prefixes, suffixes = [], []
        for r in rows:
            messages = [m for m in clean_messages(r["messages"]) if m["role"] != "system"]
            if [m["role"] for m in messages] != ["user", "assistant"]:
                raise TemplateError(
                    f"{type(self.processor).__name__} has no chat template: only single-turn user/assistant "
                    f"samples can be trained (got roles {[m['role'] for m in messages]})."
                )
            # The processor wants its image tokens up front, one per image (it warns and guesses otherwise).
            prefixes.extend(render(self.processor, [messages[:1]], add_generation_prompt=True))
            suffixes.append(reply_text(messages[1]))
        batch = self.processor(
            text=prefixes, images=nested_images(rows), suffix=suffixes, padding="longest", return_tensors="pt"
        )
        batch["labels"][torch.isin(batch["input_ids"], self.image_token_ids)] = IGNORE_INDEX
        batch["labels"][batch["attention_mask"] == 0] = IGNORE_INDEX
        return dict(batch)

    # ---------------------------------------------------------------- lengths
    def sample_lengths(self, rows: list[dict]) -> list[int]:
        """Token length of each row, text plus image tokens, as the model will see it."""
        if self.uses_suffix:
            batch = self._collate_prefix_suffix(rows)
        else:
            texts, _ = self.render_with_spans([clean_messages(r["messages"]) for r in rows])
            batch = self._process(texts, nested_images(rows))
        return batch["attention_mask"].sum(dim=1).tolist()

    def _apply_length_policy(self, rows: list[dict], lengths: list[int]) -> list[dict]:
        """Rows that fit max_length; raises under the `error` policy, logs and counts under `drop`."""
        if self.max_length is None:
            return rows
        too_long = [(i, n) for i, n in enumerate(lengths) if n > self.max_length]
        if not too_long:
            return rows
        described = ", ".join(f"{_describe(rows[i], i)} has {n} tokens" for i, n in too_long)
        if self.too_long == "error":
            raise SampleTooLongError(
                f"{described} (max_length={self.max_length}, text plus image tokens). Truncating would cut "
                "through image tokens or replies: raise max_length, shorten the sample, or set too_long: drop."
            )
        self.dropped += len(too_long)
        logger.warning("Dropped %s over max_length=%d (%d dropped so far).", described, self.max_length, self.dropped)
        kept = [r for i, r in enumerate(rows) if i not in {j for j, _ in too_long}]
        if not kept:
            raise SampleTooLongError(f"Every sample of the batch is over max_length={self.max_length}: {described}.")
        return kept


def _describe(row: dict, index: int) -> str:
    return f"sample {row['id']!r}" if row.get("id") is not None else f"batch sample {index}"
