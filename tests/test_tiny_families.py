"""Every tiny family builds, loads back through the Auto classes, processes a multi-image chat and trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_families import FAMILIES, build_tiny_family, chat_template
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlm_sft.modeling.setup import COMPONENTS
from vlm_sft.quickstart.tiny_model import LLAVA_15_CHAT_TEMPLATE

# The special tokens each family's template or processor emits; each must be one token of the tokenizer.
SPECIAL_TOKENS = {
    "llava": ["<image>"],
    "llava_next": ["<image>", "</s>"],
    **{
        family: ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
        for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    },
    **{
        family: ["<fake_token_around_image>", "<image>", "<global-img>", "<row_1_col_1>", "<end_of_utterance>"]
        for family in ("idefics3", "smolvlm")
    },
    "gemma3": [
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<image_soft_token>",
        "<end_of_image>",
    ],
    "paligemma": ["<image>", "<bos>", "<eos>", "<loc0000>", "<loc1023>", "<seg000>", "<seg127>"],
}
# The real template each family ships (trl/chat_templates/NAME.jinja); Qwen2-VL shares Qwen2.5-VL's.
TEMPLATES = {
    "llava_next": "llava_next",
    "qwen2_vl": "qwen2_5_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "idefics3": "idefics3",
    "smolvlm": "smolvlm",
    "gemma3": "gemma3",
}
CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is on the workbench?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A screwdriver and a multimeter."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is the soldering iron on?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Yes, the LED is green."}]},
]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    # Two sizes and aspect ratios, so tiling (LLaVA-NeXT, Idefics3) and Qwen's grids differ between the images.
    return [Image.new("RGB", (64, 48), (200, 40, 40)), Image.new("RGB", (40, 40), (40, 200, 40))]


def test_families_are_keyed_by_model_type():
    assert set(FAMILIES) == set(COMPONENTS) == set(SPECIAL_TOKENS)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_loads_processes_and_trains(family: str, tiny_dir, images: list[Image.Image]):
    folder = tiny_dir(family)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    tokenizer = processor.tokenizer
    assert model.config.model_type == family
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    for token in SPECIAL_TOKENS[family]:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)], token

    if family == "paligemma":  # no chat template: the prefix / suffix path, loss on the suffix only
        assert processor.chat_template is None
        inputs = processor(
            text=["<image><image>What is on the workbench?"],
            images=[images],
            suffix=["A screwdriver and a multimeter."],
            return_tensors="pt",
        )
        suffix_ids = tokenizer("A screwdriver and a multimeter.", add_special_tokens=False).input_ids
        assert inputs.pop("labels")[0, -len(suffix_ids) - 1 :].tolist() == [*suffix_ids, tokenizer.eos_token_id]
    else:
        expected = LLAVA_15_CHAT_TEMPLATE if family == "llava" else chat_template(TEMPLATES[family])
        assert processor.chat_template == expected
        text = processor.apply_chat_template(CONVERSATION, tokenize=False)
        assert "Yes, the LED is green." in text
        inputs = processor(text=[text], images=[images], return_tensors="pt")

    model.train()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert math.isfinite(loss.item())
    # The image features reached the loss: the projector got a gradient (the forward also checks that the image
    # placeholder count matches the features).
    paths = COMPONENTS[family]
    parts = {
        name: model.get_submodule(getattr(paths, name)) for name in ("vision_tower", "projector", "language_model")
    }
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts["projector"].parameters())
    assert parts["language_model"] is not parts["vision_tower"]


def test_build_reuses_a_complete_folder(tiny_dir):
    folder = tiny_dir("qwen2_vl")
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_family("qwen2_vl", folder) == folder
    assert weights.stat().st_mtime_ns == before


def test_image_only_processor_round_trips_and_refuses_videos(tiny_dir, tmp_path: Path):
    processor = AutoProcessor.from_pretrained(tiny_dir("smolvlm"))
    processor.save_pretrained(tmp_path)  # as with every saved adapter
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is type(processor) and reloaded.chat_template == processor.chat_template
    with pytest.raises(ValueError, match="images and text only"):
        processor(text=["<video>"], videos=[torch.zeros(2, 3, 32, 32)])


def test_unknown_family_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="expected one of llava, llava_next"):
        build_tiny_family("blip2", tmp_path)
