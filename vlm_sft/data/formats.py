"""LLaVA and messages records -> one normalized `Sample` each, noting every key, type and role problem.

LLaVA:    {"id"?, "image": "a.jpg" | ["a.jpg", ...],
           "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}
messages: {"id"?, "images": ["a.jpg", ...], "messages": [{"role": "user", "content": str | [parts]}, ...]}
          as TRL and OpenAI write them: parts are {"type": "text", "text": ...}, {"type": "image"} or, inline,
          {"type": "image", "image": "a.jpg"} / {"type": "image_url", "image_url": {"url": "a.jpg"}}.

Each `<image>` placeholder becomes an image part where it stands in the text, so multi-image
samples keep their interleaving. Checks that need the whole sample live in `data_validation`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from vlm_sft.data.problems import Problem
from vlm_sft.data.sources import RawRecord

IMAGE_PLACEHOLDER = "<image>"
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FORMATS = ("auto", "llava", "messages")
_KEYS = {  # format -> (conversation key, per-message role key, per-message text key)
    "llava": ("conversations", "from", "value"),
    "messages": ("messages", "role", "content"),
}
_IMAGE_KEYS = ("image", "images")  # both formats accept either spelling
_IMAGE_PART_TYPES = ("image", "image_url", "input_image")
_PLACEHOLDER_SPLIT = re.compile(r"\n?" + re.escape(IMAGE_PLACEHOLDER) + r"\n?")

# A path relative to the image folder, or {"bytes": ..., "path": ...}: with a path only from a `datasets`
# source (a trusted row); a dict typed into JSON becomes a plain path or {"bytes": ..., "path": None}.
ImageRef = str | dict


@dataclass
class Sample:
    """One conversation in the row schema, plus where it came from so that problems can point at it."""

    file: str
    index: int
    line: int | None = None
    sample_id: str | None = None
    trusted: bool = False  # a row written by `datasets`: its image dicts' paths are not the user's
    format: str = "llava"
    image_field: str = "image"
    images: list[ImageRef] | None = field(default_factory=list)  # None: the image field itself is invalid
    # {"role": "user" | "assistant" | "system" | None, "content": [parts] | None}; None = already reported
    messages: list[dict] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)  # where each message came from: "conversations[2]"
    image_fields: list[str] = field(default_factory=list)  # where each image came from: "images[1]"
    inline_images: list[tuple[ImageRef, str]] = field(default_factory=list)  # (image, part) given in messages
    problems: list[Problem] = field(default_factory=list)

    @property
    def conversation_key(self) -> str:
        return _KEYS[self.format][0]

    @property
    def role_key(self) -> str:
        return _KEYS[self.format][1]

    @property
    def text_key(self) -> str:
        return _KEYS[self.format][2]

    def problem(self, field_name: str | None, message: str, fix: str, *, warning: bool = False) -> None:
        self.problems.append(
            Problem(
                self.file,
                message,
                fix,
                index=self.index,
                sample_id=self.sample_id,
                field=field_name,
                line=self.line,
                warning=warning,
            )
        )


def content_parts(text: str) -> list[dict]:
    """Split text at <image> placeholders into text and image parts, in the order they stand.

    The newline that conventionally follows or precedes a placeholder ("<image>\\nWhat is this?")
    belongs to the placeholder, and whitespace-only pieces between placeholders carry nothing.
    """
    parts: list[dict] = []
    for i, piece in enumerate(_PLACEHOLDER_SPLIT.split(text)):
        if i > 0:
            parts.append({"type": "image", "text": None})
        if piece.strip():
            parts.append({"type": "text", "text": piece})
    return parts


def normalize(record: RawRecord, file: str, data_format: str = "auto", *, trusted: bool = False) -> Sample:
    """One raw record -> a Sample whose `problems` list everything wrong with its keys, types and roles.

    `trusted`: the record is a row `datasets` wrote (save_to_disk, Hub), so the paths in its image dicts are
    kept as they are; in user JSON, a dict's path is checked like any other path (inside the image folder).
    """
    sample = Sample(file, record.index, record.line, trusted=trusted)
    value = record.value
    if not isinstance(value, dict):
        sample.problem(
            "(the sample)",
            f"expected a JSON object {{...}} per sample, got {_kind(value)}.",
            "write each sample as an object with 'conversations' (LLaVA) or 'messages'.",
        )
        sample.images = None
        return sample
    raw_id = value.get("id")
    sample.sample_id = None if raw_id is None else str(raw_id)
    if raw_id is not None and not _valid_id(raw_id):
        sample.sample_id = None
        sample.problem("id", f"expected a string or a whole number, got {_kind(raw_id)}.", 'write e.g. "id": "a-17".')
    fmt = _record_format(value, data_format, sample)
    if fmt is None:
        sample.images = None
        return sample
    sample.format = fmt
    _check_unknown_keys(value, ("id", *_IMAGE_KEYS, sample.conversation_key), None, sample)
    sample.images = _image_refs(value, sample)
    _read_turns(value[sample.conversation_key], sample)
    if sample.inline_images and sample.images:
        sample.problem(
            sample.image_field,
            "images are given both in this field and inline in the messages.",
            "list each image once: either all paths here with {'type': 'image'} parts, or all inline.",
        )
        sample.images = None
    elif sample.inline_images and sample.images is not None:
        sample.images = [ref for ref, _ in sample.inline_images]
        sample.image_fields = [at for _, at in sample.inline_images]
    return sample


def _record_format(value: dict, data_format: str, sample: Sample) -> str | None:
    """Which schema this record follows (per record when auto); reports a missing or misspelled key."""
    wanted = [data_format] if data_format in _KEYS else list(_KEYS)
    for fmt in wanted:
        if _KEYS[fmt][0] in value:
            return fmt
    names = " or ".join(repr(_KEYS[fmt][0]) for fmt in wanted)
    keys = ", ".join(map(repr, value)) or "none"
    targets = [_KEYS[fmt][0] for fmt in wanted]
    unknown = [k for k in map(str, value) if k not in ("id", *_IMAGE_KEYS)]
    guess = next((k for k in unknown if difflib.get_close_matches(k, targets, 1, 0.75)), None)
    if guess is not None:
        hint = f" - did you mean {difflib.get_close_matches(guess, targets, 1, 0.75)[0]!r} instead of {guess!r}?"
    elif any(keys[0] in value for keys in _KEYS.values()):
        hint = f" - this sample is in the other format than --format {data_format}; use --format auto."
    else:
        hint = ""
    sample.problem(
        guess or names.split(" or ")[0].strip("'"),
        f"missing key {names} (keys found: {keys}){hint}",
        "name the turns list 'conversations' (LLaVA: from/value) or 'messages' (role/content).",
    )
    return None


def _check_unknown_keys(value: dict, known: tuple[str, ...], prefix: str | None, sample: Sample) -> None:
    """A key that is close to a known one is a misspelling that would silently drop data; others are ignored."""
    for key in value:
        if key in known or not isinstance(key, str):
            continue
        match = difflib.get_close_matches(key, known, 1, 0.75)
        if match and match[0] not in value:
            where = f"{prefix}.{key}" if prefix else key
            sample.problem(
                where, f"unknown key {key!r} - did you mean {match[0]!r}?", f"rename {key!r} to {match[0]!r}."
            )


def _image_refs(value: dict, sample: Sample) -> list[ImageRef] | None:
    present = [k for k in _IMAGE_KEYS if value.get(k) is not None]
    if len(present) > 1:
        sample.problem("image", "has both 'image' and 'images'.", "put all the sample's image paths in one list.")
        return None
    key = present[0] if present else ("image" if sample.format == "llava" else "images")
    sample.image_field = key
    raw = value.get(key)
    raw = [] if raw is None else [raw] if isinstance(raw, (str, dict)) else raw
    if not isinstance(raw, list):
        sample.problem(
            key,
            f"expected a path or a list of paths, got {_kind(raw)}.",
            'write "image": "a.jpg" or "image": ["a.jpg", "b.jpg"].',
        )
        return None
    refs, ok = [], True
    for i, ref in enumerate(raw):
        where = f"{key}[{i}]" if isinstance(value.get(key), list) else key
        if isinstance(ref, dict) and (ref.get("bytes") is not None or isinstance(ref.get("path"), str)):
            ref = _dict_ref(ref, where, sample)
            if ref is None:
                ok = False
                continue
            refs.append(ref)
        elif isinstance(ref, str) and ref.strip():
            ref = _string_ref(ref, where, sample)  # a URL or data: URI is handled as in the messages format
            if ref is False:
                ok = False
                continue
            refs.append(ref)
        else:
            ok = False
            sample.problem(
                where,
                f"expected an image path (a non-empty string), got {_kind(ref)}.",
                "give the image file's path relative to the image folder.",
            )
            continue
        sample.image_fields.append(where)
    return refs if ok else None


def _read_turns(turns: Any, sample: Sample) -> None:
    conversation_key = sample.conversation_key
    if not isinstance(turns, list) or not turns:
        example = (
            '[{"from": "human", "value": "<image>\\nQuestion?"}, {"from": "gpt", "value": "Answer."}]'
            if sample.format == "llava"
            else '[{"role": "user", "content": "<image>\\nQuestion?"}, {"role": "assistant", "content": "..."}]'
        )
        got = "an empty list" if isinstance(turns, list) else _kind(turns)
        sample.problem(conversation_key, f"expected a non-empty list of turns, got {got}.", f"write {example}.")
        return
    for i, turn in enumerate(turns):
        where = f"{conversation_key}[{i}]"
        sample.fields.append(where)
        if not isinstance(turn, dict):
            sample.problem(
                where,
                f"expected a turn object {{{sample.role_key!r}: ..., {sample.text_key!r}: ...}}, got {_kind(turn)}.",
                "write each turn as an object.",
            )
            sample.messages.append({"role": None, "content": None})
            continue
        _check_unknown_keys(turn, (sample.role_key, sample.text_key), where, sample)
        role = _role(turn, where, sample)
        content = _turn_content(turn, where, sample)
        sample.messages.append({"role": role, "content": content})


def _role(turn: dict, where: str, sample: Sample) -> str | None:
    key = sample.role_key
    raw = turn.get(key)
    if isinstance(raw, str) and raw.strip().lower() in ROLE_ALIASES:  # "Human" and "GPT " are no one else
        return ROLE_ALIASES[raw.strip().lower()]
    allowed = "human/user, gpt/assistant or system" if sample.format == "llava" else "user, assistant or system"
    if raw is None:
        sample.problem(
            f"{where}.{key}",
            f"missing key {key!r}; expected {allowed}.",
            f"add {key!r} to the turn (who is speaking).",
        )
        return None
    guess = difflib.get_close_matches(raw.strip().lower(), list(ROLE_ALIASES), 1, 0.6) if isinstance(raw, str) else []
    hint = f" - did you mean {guess[0]!r}?" if guess else ""
    sample.problem(f"{where}.{key}", f"unknown role {raw!r}; expected {allowed}{hint}", f"use one of {allowed}.")
    return None


def _turn_content(turn: dict, where: str, sample: Sample) -> list[dict] | None:
    key = sample.text_key
    raw = turn.get(key)
    if isinstance(raw, str):
        return content_parts(raw)
    if raw is None:
        sample.problem(f"{where}.{key}", f"missing key {key!r} (the text of the turn).", f"add {key!r} with the text.")
        return None
    if sample.format == "messages" and isinstance(raw, list):
        return _message_parts(raw, f"{where}.{key}", sample)
    expected = "a string or a list of parts" if sample.format == "messages" else "a string"
    sample.problem(f"{where}.{key}", f"expected {expected}, got {_kind(raw)}.", "write the turn's text as a string.")
    return None


def _message_parts(raw: list, where: str, sample: Sample) -> list[dict] | None:
    """TRL/OpenAI content parts -> our parts; inline image references are collected on the sample."""
    parts: list[dict] = []
    for j, part in enumerate(raw):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.extend(content_parts(part["text"]))
        elif kind in _IMAGE_PART_TYPES:
            ref = _inline_image(part, at, sample)
            if ref is False:
                return None
            if ref is not None:
                sample.inline_images.append((ref, at))
            parts.append({"type": "image", "text": None})
        else:
            got = f"type {kind!r}" if kind is not None else _kind(part)
            sample.problem(
                at,
                f"expected a part {{'type': 'text', 'text': ...}} or {{'type': 'image'}}, got {got}.",
                "write text as {'type': 'text', 'text': '...'} and images as {'type': 'image'}.",
            )
            return None
    return parts


def _inline_image(part: dict, at: str, sample: Sample) -> ImageRef | None | bool:
    """The image an image part carries itself (None: it refers to the sample's `images`); False on error."""
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    ref = next((v for v in (part.get("image"), part.get("path"), url) if v is not None), None)
    if isinstance(ref, dict) and part.get("type") == "image":
        if ref.get("bytes") is None and not isinstance(ref.get("path"), str):
            sample.problem(
                at,
                f"expected an image path or {{'bytes': ...}}, got {_kind(ref)}.",
                "give the path relative to the image folder.",
            )
            return False
        ref = _dict_ref(ref, at, sample)
        return False if ref is None else ref
    if ref is None or isinstance(ref, dict):
        if part.get("type") != "image":
            sample.problem(
                at,
                "an image_url part without a url.",
                "write {'type': 'image_url', 'image_url': "
                "{'url': 'a.jpg'}} or use {'type': 'image'} with the path in 'images'.",
            )
            return False
        return ref
    if not isinstance(ref, str) or not ref.strip():
        sample.problem(at, f"expected an image path, got {_kind(ref)}.", "give the path relative to the image folder.")
        return False
    return _string_ref(ref, at, sample)


def _valid_id(raw: Any) -> bool:
    """Strings and whole numbers; NaN, Infinity, floats, lists and objects are no names for a sample."""
    return isinstance(raw, str) or (isinstance(raw, int) and not isinstance(raw, bool))


def _string_ref(ref: str, at: str, sample: Sample) -> ImageRef | bool:
    """A path, a `data:` URI (embedded bytes) or a refused remote URL (False, reported)."""
    if ref.startswith(("http://", "https://")):
        sample.problem(
            at,
            f"remote image URL {ref[:80]!r} - images are never downloaded during training.",
            "download the image into the image folder and give its relative path.",
        )
        return False
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        try:
            return {"bytes": base64.b64decode(payload, validate=True), "path": None}
        except (binascii.Error, ValueError):
            sample.problem(
                at,
                f"a data: URL whose base64 payload is invalid ({header[:40]}).",
                "re-encode the image, or save it to a file and give its path.",
            )
            return False
    return ref.removeprefix("file://")


def _dict_ref(ref: dict, where: str, sample: Sample) -> ImageRef | None:
    """An image dict as the rest of the pipeline may trust it; None (reported) when it is unusable.

    A `datasets` row keeps its dict (`datasets` wrote the path). A dict typed into JSON is the user's: its
    bytes (a list of byte values, or base64 text) are embedded, else its path becomes a plain path, checked
    like any other (inside the image folder, no absolute path, no symlink out).
    """
    if sample.trusted:
        return ref
    raw = ref.get("bytes")
    if raw is None:
        path = ref["path"]
        if not path.strip():
            sample.problem(
                where, "expected an image path, got an empty 'path'.", "give the path relative to the image folder."
            )
            return None
        return path
    try:
        if isinstance(raw, str):
            return {"bytes": base64.b64decode(raw, validate=True), "path": None}
        if isinstance(raw, list):
            return {"bytes": bytes(raw), "path": None}
    except (binascii.Error, TypeError, ValueError):
        pass
    sample.problem(
        where,
        f"expected 'bytes' as base64 text or a list of byte values, got {_kind(raw)}.",
        "give the image file's path relative to the image folder instead.",
    )
    return None


def _kind(value: Any) -> str:
    """How a JSON value reads to a person: 'a number (3)', 'a list', 'null'."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    if value is None:
        return "null"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} ({shown})"
