"""VisionSFTCollator on every supported family: exact trained spans, TRL's training templates as oracle, training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import trl
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlm_sft.collator import IGNORE_INDEX, VisionSFTCollator

CHAT_FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "gemma3"]
# Each family's end-of-turn as its real template renders it after a reply (llava-1.5 renders none:
# the collator adds </s>). Everything in a reply up to and including it is trained.
END_OF_TURN = {
    "llava": "</s>",
    "llava_next": "</s>",
    "qwen2_vl": "<|im_end|>\n",
    "qwen2_5_vl": "<|im_end|>\n",
    "qwen3_vl": "<|im_end|>\n",
    "idefics3": "<end_of_utterance>\n",
    "smolvlm": "<end_of_utterance>\n",
    "gemma3": "<end_of_turn>\n",
}
# Templates that put the role header's separating space inside the reply.
LEADING_SPACE = {"llava", "llava_next", "idefics3", "smolvlm"}
# TRL's training variants (with {% generation %} markers) of each family's template: the oracle.
TRAINING_TEMPLATE = {
    "llava_next": "llava_next_training",
    "qwen2_vl": "qwen2_5_vl_training",
    "qwen2_5_vl": "qwen2_5_vl_training",
    "qwen3_vl": "qwen3_vl_training",
    "idefics3": "idefics3_training",
    "smolvlm": "smolvlm_training",
    "gemma3": "gemma3_training",
}


def _rows() -> list[dict]:
    """A multi-turn two-image conversation, a text-only one with a system prompt, and a three-turn one."""
    img = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (52, 44), "blue"), Image.new("RGB", (36, 36), "green")]

    def user(text, n=0):
        return {"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}

    def bot(text):
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    return [
        {
            "images": img[:2],
            "messages": [
                user("Which tool is on the mat?", 1),
                bot("A torque wrench."),
                user("And on this shelf?", 1),
                bot('{"count": 3, "item": "M4 bolts"}'),
            ],
        },
        {
            "images": [],
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
                user("Is the gripper open?"),
                bot("Closed."),
            ],
        },
        {
            "images": img[2:],
            "messages": [
                user("Gauge reading?", 1),
                bot("4.2 bar."),
                user("Safe?"),
                bot("Yes."),
                user("Sure?"),
                bot("Yes!"),
            ],
        },
    ]


REPLIES = [["A torque wrench.", '{"count": 3, "item": "M4 bolts"}'], ["Closed."], ["4.2 bar.", "Yes.", "Yes!"]]


def _spans(tokenizer, input_ids: torch.Tensor, labels: torch.Tensor) -> list[str]:
    runs, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist(), strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(r) for r in [*runs, current] if r]


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    cache: dict[str, tuple] = {}

    def load(family: str):
        if family not in cache:
            path = tiny_dir(family)
            cache[family] = (path, AutoProcessor.from_pretrained(path, trust_remote_code=True))
        return cache[family]

    return load


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_trained_spans_are_exactly_the_replies_and_their_end_of_turn(loaded, family):
    _, processor = loaded(family)
    batch = VisionSFTCollator(processor)(_rows())
    space = " " if family in LEADING_SPACE else ""
    for i, replies in enumerate(REPLIES):
        spans = _spans(processor.tokenizer, batch["input_ids"][i], batch["labels"][i])
        assert spans == [space + r + END_OF_TURN[family] for r in replies], (family, i)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


@pytest.mark.parametrize("family", sorted(TRAINING_TEMPLATE))
def test_mask_equals_trl_training_template_oracle(loaded, family):
    """Same tokens, same trained positions as transformers' assistant mask with TRL's marked template."""
    _, processor = loaded(family)
    rows = _rows()
    ours = VisionSFTCollator(processor)(rows)
    template = (Path(trl.__file__).parent / "chat_templates" / f"{TRAINING_TEMPLATE[family]}.jinja").read_text()
    for i, row in enumerate(rows):
        messages = copy.deepcopy(row["messages"])
        images = iter(row["images"])
        for m in messages:
            for part in m["content"]:
                if part["type"] == "image":
                    part["image"] = next(images)
        oracle = processor.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        n = int(ours["attention_mask"][i].sum())
        assert ours["input_ids"][i][:n].tolist() == list(oracle["input_ids"][0]), family
        assert (ours["labels"][i][:n] != IGNORE_INDEX).int().tolist() == list(oracle["assistant_masks"][0]), family


def test_paligemma_prefix_suffix_path(loaded):
    _, processor = loaded("paligemma")
    row = {
        "images": [Image.new("RGB", (40, 30), "red")],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "caption en"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red square"}]},
        ],
    }
    batch = VisionSFTCollator(processor)([row, row])
    assert _spans(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == ["a red square<eos>"]
    assert (batch["labels"][batch["input_ids"] == processor.image_token_id] == IGNORE_INDEX).all()
    assert "token_type_ids" in batch
    multi = copy.deepcopy(row)
    multi["messages"] += multi["messages"]
    with pytest.raises(ValueError, match="only single-turn"):
        VisionSFTCollator(processor)([multi])


@pytest.mark.parametrize("family", [*CHAT_FAMILIES, "paligemma"])
def test_forward_backward_and_loss_falls(loaded, family):
    path, processor = loaded(family)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    if family == "paligemma":
        rows = [
            {
                "images": [Image.new("RGB", (40, 30), c)],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "color?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": c}]},
                ],
            }
            for c in ("red", "blue")
        ]
    else:
        rows = _rows()
    batch = VisionSFTCollator(processor)(rows)
    # Architecture-specific inputs pass through untouched.
    expected_keys = {"qwen2_vl": "image_grid_thw", "idefics3": "pixel_attention_mask", "llava_next": "image_sizes"}
    assert expected_keys.get(family, "pixel_values") in batch
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
