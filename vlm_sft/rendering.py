"""One rendering of a conversation and its images, for training and for every prompt built from a model.

The collator trains on `render(...)`; eval, infer, merge checks, scored evaluation during training and the
data curve build prompts with `prompt_inputs(...)`. Both render with the processor's chat template after
`use_training_template(processor)`, so the template saved to output_dir (and pushed, and merged) speaks
exactly the text the adapter was trained on, and anything that applies it (transformers pipelines, vLLM,
TGI) builds the same prompt without knowing this package:

- where the model's template renders nothing after an assistant reply (llava-1.5's), the training template
  renders the tokenizer's eos there, after every reply (LLaVA itself was trained so, and the model has to
  learn to stop);
- where a known template moves every image in front of the text (llava-1.5's), it renders them where they
  stand, so "cell A: <image> cell B: <image>" keeps which image is A.

The change is written into the template as a leading comment (`template_note` reads it back for the card),
which also makes `use_training_template` idempotent: an adapter saved before this rule existed gets it
applied when loaded for eval or infer, one saved after it is left alone. The base model is never changed:
it is evaluated with its own template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "clean_messages",
    "encode",
    "load_image",
    "nested_images",
    "prompt_inputs",
    "render",
    "reply_text",
    "template_note",
    "to_rgb",
    "use_training_template",
    "uses_prefix_suffix",
    "with_system_prompt",
]

# First line of a template we changed; the rest of that comment says what changed and why (for the card).
MARK = "{#- vlm-sft training template:"
_NOTE = re.compile(r"\{#- vlm-sft training template: (.*?) -#\}", re.S)

# llava-hf/llava-1.5-*-hf's template (as pinned in transformers' tests/models/llava/test_processing_llava.py, without
# generation markers), which renders every image of a message before its text and no end-of-turn after a reply.
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# The same text with the parts of a message in their order: identical for "<image> question" messages.
_LLAVA_15_IN_ORDER = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] + ' ' }}{% endif %}"
    "{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Templates that reorder images, by their text without whitespace, and their in-order equivalents.
_IN_ORDER = {"".join(LLAVA_15_CHAT_TEMPLATE.split()): _LLAVA_15_IN_ORDER}

# Put before a template: every assistant reply's last text gets `eos` (a string reply, or its last text part).
_EOS_PRELUDE = """{%- set vlm_sft = namespace(messages=[]) -%}
{%- for message in messages -%}
{%- if message['role'] == 'assistant' and message['content'] is string -%}
{%- set message = dict(message, content=message['content'].rstrip() ~ EOS) -%}
{%- elif message['role'] == 'assistant' -%}
{%- set last = namespace(index=-1, parts=[]) -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}{%- set last.index = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for part in message['content'] -%}
{%- if loop.index0 == last.index -%}{%- set part = dict(part, text=part['text'].rstrip() ~ EOS) -%}{%- endif -%}
{%- set last.parts = last.parts + [part] -%}
{%- endfor -%}
{%- set message = dict(message, content=last.parts) -%}
{%- endif -%}
{%- set vlm_sft.messages = vlm_sft.messages + [message] -%}
{%- endfor -%}
{%- set messages = vlm_sft.messages -%}
"""


# ---------------------------------------------------------------------------------------------- messages


def clean_messages(messages: Sequence[dict]) -> list[dict]:
    """Drop None-valued keys that Arrow adds to content parts ({"type": "image", "text": None})."""
    cleaned = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{k: v for k, v in part.items() if v is not None} for part in content]
        cleaned.append({"role": message["role"], "content": content})
    return cleaned


def reply_text(message: dict) -> str:
    """The text of a message (its text parts joined)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """`messages` with `system_prompt` in front when given and they have no system message of their own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}, *messages]


def nested_images(rows: Sequence[dict]) -> list[list] | None:
    """Images nested per sample: processors (Gemma 3, SmolVLM) need that to place them when a row has none."""
    nested = [[to_rgb(image) for image in r.get("images") or []] for r in rows]
    return nested if any(nested) else None


# ---------------------------------------------------------------------------------------------- the template


def _render_one(processor: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _needs_eos(processor: Any) -> bool:
    """Whether the template renders nothing after an assistant reply (the collator's span rule, on a probe)."""
    probe = [
        {"role": "user", "content": [{"type": "text", "text": "Which digit?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "seven"}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
    ]
    prompt = _render_one(processor, probe[:1], True)
    through = _render_one(processor, probe[:2], False)
    return through[len(prompt) :].rstrip().endswith("seven")


def use_training_template(processor: Any, *, eos: bool = True) -> bool:
    """Give `processor` (and its tokenizer) the training template; True when it differs from the model's own.

    Idempotent, and a no-op for processors without a chat template (PaliGemma's prefix/suffix). `eos=False`
    leaves the end of replies as the model's template renders it.
    """
    template = getattr(processor, "chat_template", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if not isinstance(template, str) or tokenizer is None or template.startswith(MARK):
        return isinstance(template, str) and template.startswith(MARK)
    changes, body = [], _IN_ORDER.get("".join(template.split()), template)
    if body is not template:
        changes.append("renders each image where it stands in the text (the original renders all images first)")
    eos_token = tokenizer.eos_token
    if eos and eos_token and _needs_eos(processor):
        body = _EOS_PRELUDE.replace("EOS", json.dumps(eos_token)) + body
        changes.append(
            f"renders the end-of-turn token `{eos_token}` after every assistant reply, as the adapter was trained "
            "(the original renders nothing there, so prompts built from it show the model a history it never saw)"
        )
    if not changes:
        return False
    new = f"{MARK} {'; '.join(changes)}. -#}}\n{body}"
    processor.chat_template = new
    if getattr(tokenizer, "chat_template", None) == template:  # saved next to the processor's: keep them equal
        tokenizer.chat_template = new
    return True


def template_note(folder: str | Path) -> str | None:
    """What vlm-sft changed in the chat template saved in `folder` (for the model card), or None."""
    folder = Path(folder)
    text = ""
    if (folder / "chat_template.jinja").is_file():
        text = (folder / "chat_template.jinja").read_text()
    elif (folder / "chat_template.json").is_file():
        text = json.loads((folder / "chat_template.json").read_text()).get("chat_template", "")
    found = _NOTE.match(text) if text.startswith(MARK) else None
    return f"The saved chat template {found.group(1).rstrip('.')}." if found else None


# ---------------------------------------------------------------------------------------------- rendering


def render(processor: Any, conversations: list[list[dict]], *, add_generation_prompt: bool) -> list[str]:
    """Each conversation as text, through the processor's chat template (the training template once installed).

    Without a chat template (PaliGemma), the prompt is the processor's prefix: one image token per image,
    then the user's text; its processor appends the reply (suffix) itself.
    """
    if not conversations:
        return []
    if uses_prefix_suffix(processor):
        if not add_generation_prompt:
            raise ValueError(f"{type(processor).__name__} has no chat template: only prompts can be rendered.")
        return [_prefix(processor, messages) for messages in conversations]
    return processor.apply_chat_template(conversations, tokenize=False, add_generation_prompt=add_generation_prompt)


def uses_prefix_suffix(processor: Any) -> bool:
    """Whether the processor has no chat template but builds prompt + answer itself (PaliGemma's prefix/suffix)."""
    import inspect

    if getattr(processor, "chat_template", None) is not None:
        return False
    name = type(processor).__name__
    return "suffix" in inspect.signature(type(processor).__call__).parameters or name.startswith("PaliGemma")


def _prefix(processor: Any, messages: list[dict]) -> str:
    users = [m for m in messages if m["role"] == "user"]
    if len(users) != 1 or any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            f"{type(processor).__name__} has no chat template: only single-turn questions can be asked "
            f"(got roles {[m['role'] for m in messages]})."
        )
    content = users[0]["content"]
    n_images = 0 if isinstance(content, str) else sum(part.get("type") == "image" for part in content)
    return processor.image_token * n_images + reply_text(users[0])


def encode(processor: Any, texts: list[str], images: list | None, *, padding_side: str, **kwargs: Any) -> Any:
    """The processor call for rendered texts: the one place that decides whether the tokenizer adds BOS.

    Templates that render BOS themselves (Gemma, Llama 3) must not get a second one; others get the
    tokenizer's. `kwargs` go to the processor (return_tensors defaults to "pt").
    """
    bos = processor.tokenizer.bos_token
    kwargs.setdefault("return_tensors", "pt")
    return processor(
        text=texts,
        images=images,
        padding=True,
        padding_side=padding_side,
        add_special_tokens=not (bos and all(t.startswith(bos) for t in texts)),
        **kwargs,
    )


def prompt_inputs(processor: Any, conversations: list[list[dict]], images: list[list] | None) -> Any:
    """Model inputs to generate the next assistant turn of each conversation, left-padded for batching.

    `conversations` end with the user turn to answer; `images` are nested per conversation, in the order
    their image parts appear (any mode: converted by `to_rgb` as in training).
    """
    texts = render(processor, [clean_messages(c) for c in conversations], add_generation_prompt=True)
    if images is not None:
        images = [[to_rgb(image) for image in row] for row in images]
        images = images if any(images) else None
    return encode(processor, texts, images, padding_side="left")


# ---------------------------------------------------------------------------------------------- images


def to_rgb(image: Any) -> Any:
    """An RGB PIL image as every path feeds the model: transparency composited onto white, 16-bit scaled to 8.

    Anything but a PIL image (an array, a tensor) is returned as it is: the processor takes those directly.
    """
    from PIL import Image

    if not isinstance(image, Image.Image) or image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale PNGs decode as I;16 / I
        import numpy as np

        scale = 257 if image.mode != "I" or np.asarray(image).max() > 255 else 1
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / scale).clip(0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        import numpy as np

        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), "L")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Any:
    """Open an image file as `to_rgb` gives it to the model; OSError/ValueError when it is not a readable image."""
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()
        return to_rgb(opened)
