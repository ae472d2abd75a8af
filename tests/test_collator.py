"""VisionSFTCollator on LLaVA-1.5's real chat template: masks checked token by token."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from vlm_sft.collator import IGNORE_INDEX, SampleTooLongError, TemplateError, VisionSFTCollator


def _image(color: str = "red") -> Image.Image:
    return Image.new("RGB", (40, 30), color)


def _user(text: str, images: int = 0) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _trained_spans(processor, input_ids: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Decode each contiguous run of trained positions."""
    spans, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist(), strict=True):
        if label != IGNORE_INDEX:
            assert label == token, "a trained label must be the input token itself"
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [processor.tokenizer.decode(s) for s in spans]


@pytest.fixture()
def rows():
    return [
        {  # multi-turn, two images, one per user turn
            "images": [_image("red"), _image("blue")],
            "messages": [
                _user("What is on the bench?", images=1),
                _assistant("A Phillips screwdriver."),
                _user("And in this photo?", images=1),
                _assistant("Wire strippers and a multimeter."),
            ],
        },
        {  # single turn, text only, with a system prompt
            "images": [],
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                _user("Is the soldering iron on?"),
                _assistant("Yes."),
            ],
        },
    ]


def test_every_assistant_reply_and_its_eos_are_trained_exactly(llava_processor, rows):
    batch = VisionSFTCollator(llava_processor)(rows)
    spans = [_trained_spans(llava_processor, batch["input_ids"][i], batch["labels"][i]) for i in range(2)]
    # llava-1.5's template renders no end-of-turn token: the collator adds </s> and trains it.
    assert spans[0] == [" A Phillips screwdriver.</s>", " Wire strippers and a multimeter.</s>"]
    assert spans[1] == [" Yes.</s>"]


def test_rendered_text_keeps_the_template_and_inserts_eos_after_each_reply(llava_processor, rows):
    texts, _ = VisionSFTCollator(llava_processor).render_with_spans([r["messages"] for r in rows])
    assert texts[0] == (
        "USER: <image>\nWhat is on the bench? ASSISTANT: A Phillips screwdriver.</s> "
        "USER: <image>\nAnd in this photo? ASSISTANT: Wire strippers and a multimeter.</s> "
    )


def test_image_tokens_padding_and_prompt_never_carry_loss(llava_processor, rows):
    batch = VisionSFTCollator(llava_processor)(rows)
    image_id = llava_processor.image_token_id
    assert (batch["input_ids"] == image_id).sum() == 2 * 16  # 16 tokens per image: nothing cut
    assert (batch["labels"][batch["input_ids"] == image_id] == IGNORE_INDEX).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1], "row 1 is right-padded"
    assert batch["attention_mask"][1, 0] == 1 and batch["attention_mask"][1, -1] == 0
    assert batch["pixel_values"].shape[0] == 2


def test_padding_equal_to_eos_still_trains_the_real_eos(llava_processor, rows):
    processor = copy.deepcopy(llava_processor)
    processor.tokenizer.pad_token = processor.tokenizer.eos_token
    batch = VisionSFTCollator(processor)(rows)
    eos = processor.tokenizer.eos_token_id
    real = batch["attention_mask"][1] == 1
    assert (batch["labels"][1][real] == eos).sum() == 1, "the reply's </s> is trained"
    assert (batch["input_ids"][1][~real] == eos).all() and (batch["labels"][1][~real] == IGNORE_INDEX).all()


def test_last_turn_only(llava_processor, rows):
    batch = VisionSFTCollator(llava_processor, train_on="last_assistant_turn")(rows)
    assert _trained_spans(llava_processor, batch["input_ids"][0], batch["labels"][0]) == [
        " Wire strippers and a multimeter.</s>"
    ]


def test_pad_to_multiple_of(llava_processor, rows):
    batch = VisionSFTCollator(llava_processor, pad_to_multiple_of=64)(rows)
    assert batch["input_ids"].shape[1] % 64 == 0


def test_too_long_error_names_sample_and_length(llava_processor, rows):
    rows[0]["id"] = "bench-7"
    with pytest.raises(SampleTooLongError, match=r"sample 'bench-7' has \d+ tokens.*max_length=30"):
        VisionSFTCollator(llava_processor, max_length=30)(rows)


def test_too_long_drop_keeps_the_rest_and_counts(llava_processor, rows):
    collator = VisionSFTCollator(llava_processor, max_length=40, too_long="drop")
    batch = collator(rows)
    assert batch["input_ids"].shape[0] == 1 and collator.dropped == 1
    assert "pixel_values" not in batch  # the dropped sample's images went with it


def test_template_that_breaks_the_prefix_property_is_refused(llava_processor, rows):
    processor = copy.deepcopy(llava_processor)
    # Renders a marker after the final message only: a prefix no longer renders as a prefix.
    processor.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'text' %}"
        "{{ c['text'] }}{% else %}<image>{% endif %}{% endfor %}\n{% endfor %}"
        "{% if not add_generation_prompt %}<END>{% else %}assistant:{% endif %}"
    )
    with pytest.raises(TemplateError, match="prefix"):
        VisionSFTCollator(processor)(rows)
