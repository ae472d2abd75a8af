"""One rendering everywhere: the saved chat template speaks the trained text, for every family; one image loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_collator_families import CHAT_FAMILIES, END_OF_TURN, LEADING_SPACE
from transformers import AutoProcessor

from vlm_sft.collator import IGNORE_INDEX, VisionSFTCollator
from vlm_sft.rendering import MARK, load_image, prompt_inputs, template_note, to_rgb, use_training_template


def _user(*parts: str) -> dict:
    """A user turn; "<image>" stands for an image part, anything else is text."""
    content = [{"type": "image"} if p == "<image>" else {"type": "text", "text": p} for p in parts]
    return {"role": "user", "content": content}


def _bot(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


# Multi-turn, multi-image (interleaved with text), a system message, text-only turns.
CONVERSATIONS = [
    [_user("<image>", "Is the digit odd or even?"), _bot("odd"), _user("And which digit is it?"), _bot("7")],
    [
        {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
        _user("cell A:", "<image>", "cell B:", "<image>", "Which cell is darker?"),
        _bot("A"),
        _user("Sure?"),
        _bot("Yes."),
        _user("<image>", "And this one?"),
        _bot("B, the right one."),
    ],
    [_user("Say hi."), _bot("hi"), _user("Again."), _bot("hi again")],
]


def _images(messages: list[dict]) -> list:
    n = sum(p["type"] == "image" for m in messages for p in m["content"] if isinstance(m["content"], list))
    return [Image.new("RGB", (40 + 8 * i, 36), (200 - 60 * i, 40 * i, 90)) for i in range(n)]


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory):
    """family -> (the collator that trained, the processor saved to an output_dir and loaded back, the folder)."""
    cache: dict[str, tuple] = {}

    def load(family: str):
        if family not in cache:
            processor = AutoProcessor.from_pretrained(tiny_dir(family), trust_remote_code=True)
            collator = VisionSFTCollator(processor)
            out = tmp_path_factory.mktemp(f"out-{family}")
            processor.save_pretrained(out)  # what training writes to output_dir
            cache[family] = (collator, AutoProcessor.from_pretrained(out, trust_remote_code=True), out)
        return cache[family]

    return load


@pytest.mark.parametrize("family", CHAT_FAMILIES)
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_saved_template_prompt_is_a_prefix_of_the_training_text(saved, family, conversation):
    """For every assistant turn k: the saved processor's prompt for k (plain `apply_chat_template`, as a serving
    engine calls it) is a character-exact prefix of the training text, continued by the reply and end-of-turn."""
    collator, processor, _ = saved(family)
    messages = CONVERSATIONS[conversation]
    (training_text,), (spans,) = collator.render_with_spans([messages])
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for k, (start, end) in zip(turns, spans, strict=True):
        prompt = processor.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        assert training_text.startswith(prompt), (family, k, prompt[-60:], training_text[: len(prompt)][-60:])
        reply = (" " if family in LEADING_SPACE else "") + messages[k]["content"][0]["text"] + END_OF_TURN[family]
        assert training_text[len(prompt) :].startswith(reply), (family, k, training_text[len(prompt) :][:40])
        assert (start, end) == (len(prompt), len(prompt) + len(reply.rstrip(" ")))  # exactly what is trained


def test_the_invariant_fails_for_llava_15_own_template(tiny_dir, saved):
    """The check above is not vacuous: llava-1.5's shipped template renders the history without </s>."""
    collator, _, _ = saved("llava")
    base = AutoProcessor.from_pretrained(tiny_dir("llava"))
    messages = CONVERSATIONS[0]
    (training_text,), _ = collator.render_with_spans([messages])
    prompt = base.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
    assert "ASSISTANT: odd USER:" in prompt and not training_text.startswith(prompt)


@pytest.mark.parametrize("family", [*CHAT_FAMILIES, "paligemma"])
def test_prompt_tokens_are_a_prefix_of_the_training_tokens(saved, family):
    """Token level, through the one encoding rule (BOS decided once): prompt ids == the first training ids, and
    the trained tokens right after them are the reply's. PaliGemma (prefix/suffix, no template) included."""
    collator, processor, _ = saved(family)
    messages = CONVERSATIONS[0] if family != "paligemma" else CONVERSATIONS[0][:2]
    k = len(messages) - 1
    images = _images(messages)
    batch = collator([{"images": images, "messages": messages}])
    prompt = prompt_inputs(processor, [messages[:k]], [images[: len(_images(messages[:k]))]])
    n = prompt["input_ids"].shape[1]
    assert batch["input_ids"][0, :n].tolist() == prompt["input_ids"][0].tolist(), family
    trained = batch["labels"][0, n:]
    reply = processor.tokenizer.decode(trained[trained != IGNORE_INDEX])
    assert reply.strip().startswith(messages[k]["content"][0]["text"]), (family, reply)
    if family != "paligemma":  # what a transformers user gets from the saved processor alone: the same ids
        shown = iter(images)
        with_images = [
            {**m, "content": [{**p, "image": next(shown)} if p["type"] == "image" else p for p in m["content"]]}
            for m in messages[:k]
        ]
        theirs = processor.apply_chat_template(
            with_images, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        assert list(theirs["input_ids"][0]) == prompt["input_ids"][0].tolist(), family


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_saved_template_says_what_changed_and_is_stable(saved, tiny_dir, family):
    collator, processor, out = saved(family)
    base = AutoProcessor.from_pretrained(tiny_dir(family), trust_remote_code=True)
    changed = base.chat_template != processor.chat_template
    assert changed == (family == "llava")  # only llava-1.5's template renders nothing after a reply
    note = template_note(out)
    if changed:
        assert processor.chat_template.startswith(MARK) and "</s>" in note and "where it stands" in note
    else:
        assert note is None
    assert use_training_template(processor) == changed  # idempotent: applied once, recognised after
    assert processor.chat_template == collator.processor.chat_template


def test_old_adapter_without_the_training_template_gets_it(tiny_dir, saved, tmp_path):
    """An adapter saved before this rule has the base's template: loading it for eval/infer applies the rule."""
    from vlm_sft.hub.adapters import load_adapter_processor

    _, trained, _ = saved("llava")
    AutoProcessor.from_pretrained(tiny_dir("llava")).save_pretrained(tmp_path)  # as an old run saved it
    assert load_adapter_processor(tmp_path).chat_template == trained.chat_template


def test_llava_15_renders_images_where_they_stand(saved):
    _, processor, _ = saved("llava")
    text = processor.apply_chat_template([CONVERSATIONS[1][1]], tokenize=False)
    assert "cell A: <image>\ncell B: <image>\nWhich cell" in text
    single = processor.apply_chat_template([_user("<image>", "What digit is this?")], tokenize=False)
    assert single == "USER: <image>\nWhat digit is this? "  # unchanged for the common single-image question


# ---------------------------------------------------------------------------------------------- images


def _transparent_digit() -> Image.Image:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[4:12, 6:10] = (0, 0, 0, 255)  # an opaque black stroke on a fully transparent (black) background
    return Image.fromarray(rgba, "RGBA")


def test_to_rgb_composites_transparency_onto_white_like_the_image_processors():
    from transformers.image_transforms import convert_to_rgb

    rgba = _transparent_digit()
    rgb = np.asarray(to_rgb(rgba))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[8, 8].tolist() == [0, 0, 0]
    assert (rgb == np.asarray(convert_to_rgb(rgba, return_numpy=True))).all()
    assert np.asarray(rgba.convert("RGB"))[0, 0].tolist() == [0, 0, 0]  # what infer used to do: alpha dropped
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]


def test_to_rgb_greyscale_and_16_bit(tmp_path):
    grey = Image.fromarray(np.full((8, 8), 100, dtype=np.uint8), "L")
    assert np.asarray(to_rgb(grey))[0, 0].tolist() == [100, 100, 100]
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 100 * 257, dtype=np.uint16)).save(path)  # 16-bit greyscale PNG
    assert np.asarray(load_image(path))[0, 0].tolist() == [100, 100, 100]  # scaled, not clipped to white
    assert to_rgb(torch.zeros(3, 4, 4)) is not None  # arrays and tensors pass through to the processor


def test_collator_and_prompts_feed_the_same_pixels(saved):
    """Training and every prompt builder see a transparent image the same way (composited onto white)."""
    collator, processor, _ = saved("llava")
    messages = [_user("<image>", "Which digit?"), _bot("1")]
    rgba = _transparent_digit()
    trained = collator([{"images": [rgba], "messages": messages}])["pixel_values"]
    asked = prompt_inputs(processor, [messages[:1]], [[rgba]])["pixel_values"]
    white = collator([{"images": [to_rgb(rgba)], "messages": messages}])["pixel_values"]
    torch.testing.assert_close(trained, asked)
    torch.testing.assert_close(trained, white)
