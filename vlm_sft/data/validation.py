"""Checks on normalized samples: turn order, replies, placeholders, image files, duplicates.

Every check appends to the sample's problems (or returns problems) instead of raising, so the
user sees all that is wrong at once. Image files are opened and fully decoded here, with the
pixel limit enforced before decoding, so training never meets a broken or hostile image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlm_sft.data.formats import IMAGE_PLACEHOLDER, ImageRef, Sample

# PIL's own decompression-bomb threshold (~89 Mpx, a 9459 x 9459 image); PIL warns above it and
# refuses above twice it. We refuse above it: no VLM processor needs more pixels than that.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# A reply longer than this is a pasted file or a runaway export, not a conversation: the tokenizer would need
# gigabytes for it (a 100 MB reply took 14 GB and crashed it). Recipes and `data validate` can raise it.
MAX_TEXT_CHARS = 100_000
# Float images: their range (0-1? 0-255? HDR?) is unknown, so no conversion to 8 bits is safe. 16-bit integer
# images are fine: vlm_sft.rendering.to_rgb scales them to 8 bits on every path (a plain convert("RGB") would
# clip most pixels to white).
_HIGH_DEPTH_MODES = ("F",)
ANNOTATE = re.compile(r"\[\s*ANNOTATE\b[^\]]*\]?", re.IGNORECASE)
_NEAR_PLACEHOLDER = re.compile(r"<\s*/?\s*(?:image|img)\s*/?\s*>", re.IGNORECASE)


def check_sample(sample: Sample, max_text_chars: int = MAX_TEXT_CHARS) -> None:
    """Structure and text checks that need the whole sample; problems go to `sample.problems`."""
    _check_turn_order(sample)
    for i, message in enumerate(sample.messages):
        if message["role"] is not None and message["content"] is not None:
            _check_message(sample, i, message, max_text_chars)
    _check_image_count(sample)


def _check_turn_order(sample: Sample) -> None:
    roles = [m["role"] for m in sample.messages]
    if not roles or None in roles:  # an empty list or a bad role was reported already
        return
    key = sample.role_key
    start = 1 if roles[0] == "system" else 0
    expected = "user"
    for i in range(start, len(roles)):
        where = f"{sample.fields[i]}.{key}"
        if roles[i] == "system":
            sample.problem(
                where,
                "a system message is only allowed as the first message.",
                "move it to the start of the conversation, or merge it into the first one.",
            )
            continue
        if roles[i] != expected:
            sample.problem(
                where,
                f"expected {_article(expected)} turn here (turns alternate user, assistant, ...), got {roles[i]}.",
                "merge consecutive turns of one speaker, or add the missing turn.",
            )
        expected = "assistant" if roles[i] == "user" else "user"
    if start == len(roles):
        sample.problem(sample.fields[0], "has only a system message.", "add a user question and an assistant reply.")
    elif roles[-1] != "assistant":
        sample.problem(
            f"{sample.fields[-1]}.{key}",
            f"the conversation ends with {_article(roles[-1])} turn; "
            "expected it to end with an assistant reply (what the model learns to say).",
            "add the assistant's reply, or delete the unanswered last question.",
        )


def _check_message(sample: Sample, i: int, message: dict, max_text_chars: int = MAX_TEXT_CHARS) -> None:
    where = f"{sample.fields[i]}.{sample.text_key}"
    text = "".join(p["text"] for p in message["content"] if p["type"] == "text")
    n_images = sum(p["type"] == "image" for p in message["content"])
    role = message["role"]
    if len(text) > max_text_chars:
        sample.problem(
            where,
            f"the {role} text is {len(text):,} characters, over the limit of {max_text_chars:,} (max_text_chars).",
            "shorten or split it; if such long texts are intended, raise max_text_chars (recipe) / --max-text-chars.",
        )
        return  # the other checks would scan megabytes for nothing
    if role == "assistant" and not text.strip():
        sample.problem(
            where,
            "expected a non-empty assistant reply, got an empty or whitespace-only text.",
            "write the answer the model should give, or delete the turn and its question.",
        )
    elif not text.strip() and not n_images:
        sample.problem(where, f"expected the {role} text, got an empty turn.", "write the text or delete the turn.")
    if n_images and role != "user":
        sample.problem(
            where,
            f"an image in {_article(role)} turn; images belong in user turns.",
            f"move the {IMAGE_PLACEHOLDER} placeholder into the user turn the reply answers.",
        )
    for found in ANNOTATE.findall(text):
        sample.problem(
            where,
            f"unannotated placeholder {found[:80]!r} is still in the text.",
            "replace it with the real answer (what a person sees in the image).",
        )
    for found in _NEAR_PLACEHOLDER.findall(text):
        sample.problem(
            where,
            f"{found!r} looks like an image placeholder but is not exactly {IMAGE_PLACEHOLDER}.",
            f"write {IMAGE_PLACEHOLDER} (lower case, no spaces) where the image belongs.",
        )


def _check_image_count(sample: Sample) -> None:
    if sample.images is None or any(m["content"] is None for m in sample.messages) or not sample.messages:
        return  # the count would be wrong for a reason already reported
    n_parts = sum(p["type"] == "image" for m in sample.messages for p in m["content"])
    n_images = len(sample.images)
    if n_parts != n_images:
        how = (
            "one <image> in the text for each image, at the place it belongs, in the order of the list"
            if sample.format == "llava"
            else "one {'type': 'image'} part (or <image>) per path, in order"
        )
        sample.problem(
            sample.image_field,
            f"{n_parts} image placeholder{'s' * (n_parts != 1)} in the conversation "
            f"but {n_images} image{'s' * (n_images != 1)} listed; they must be equal.",
            f"write {how}.",
        )


def resolve_image(ref: ImageRef, image_dir: Path | None) -> Path | bytes | str:
    """The file (or bytes) an image reference points to, or a message saying why it is refused.

    Relative paths must stay inside the image folder after resolving `..` and symlinks, so a data
    file cannot make training read (or a report reveal) files elsewhere on the machine.
    """
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            return bytes(ref["bytes"])
        ref = ref["path"]
        # Only rows from a `datasets` source keep path dicts (`normalize(trusted=True)`): `datasets` wrote the
        # absolute path itself. Normalisation turns dicts typed into JSON into plain paths, checked below.
        if os.path.isabs(ref):
            return Path(ref)
    if os.path.isabs(ref) or ref.startswith("~"):
        return f"{ref!r} is an absolute path; image paths must be relative to the image folder."
    if "\0" in ref:
        return f"{ref!r} contains a NUL character, which no file name can hold."
    if image_dir is None:
        return f"{ref!r} is relative, but there is no image folder to resolve it in."
    root = image_dir.resolve()
    target = (root / ref).resolve()
    if target.is_relative_to(root):
        return target
    if ".." in Path(posixpath.normpath(ref.replace("\\", "/"))).parts:
        return f"{ref!r} leaves the image folder {str(image_dir)!r}."
    return f"{ref!r} is a symbolic link to {str(target)!r}, outside the image folder {str(image_dir)!r}."


def inspect_image(source: Path | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """None if the image opens and fully decodes within the pixel limit, else what is wrong with it.

    The size is read from the header first and checked before any pixel is decoded; `verify()`
    catches corrupt PNG chunks and `load()` catches truncated files (verify alone does not).
    """
    if isinstance(source, Path):
        special = _not_a_regular_file(source)
        if special:
            return special
    try:
        with _open(source) as image:
            if image.mode in _HIGH_DEPTH_MODES:
                return (
                    f"is a {image.mode} image (32-bit float per pixel), whose value range is unknown"
                )
            width, height = image.size
            if width * height > max_pixels:
                return (
                    f"is {width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                    "(a decompression bomb, or a photo far larger than any model needs)."
                )
            image.verify()
        with _open(source) as image:
            image.load()
    except FileNotFoundError:
        return "does not exist."
    except IsADirectoryError:
        return "is a folder, not an image file."
    except PermissionError:
        return "cannot be read (permission denied)."
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        return f"is refused as a decompression bomb by PIL ({e})."
    except UnidentifiedImageError:
        return "is not an image that PIL can read (wrong format, or not an image at all)."
    except OSError as e:
        if e.errno is not None:  # the file system refused (name too long, I/O error, ...), not PIL
            return f"cannot be read ({e.strerror})."
        return f"is corrupt or truncated ({e})."
    except (SyntaxError, ValueError, EOFError) as e:  # PIL reports broken data with these too
        return f"is corrupt or truncated ({e})."
    return None


def _not_a_regular_file(path: Path) -> str | None:
    """Only regular files are opened: a FIFO named pipe.png would block the reader forever."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist."
    except OSError as e:
        return f"cannot be read ({e.strerror})."
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file."
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, socket or device); only image files are read."
    return None


def _open(source: Path | bytes) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def check_images(samples: list[Sample], image_dir: Path | None, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Resolve every image reference safely, then inspect each distinct file once (in threads)."""
    resolved: dict[tuple[int, int], Path | bytes | str] = {}
    for s, sample in enumerate(samples):
        for i, ref in enumerate(sample.images or []):
            resolved[s, i] = resolve_image(ref, image_dir)
    files = {
        r if isinstance(r, Path) else hashlib.sha1(r).hexdigest(): r
        for r in resolved.values()
        if not isinstance(r, str)
    }
    # Decoding dominates and PIL releases the GIL while decoding. PIL's bomb warning is silenced:
    # `inspect_image` applies max_pixels itself (filters are process-wide: set once around the pool).
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        verdicts = dict(zip(files, pool.map(lambda src: inspect_image(src, max_pixels), files.values()), strict=True))
    for (s, i), target in resolved.items():
        sample = samples[s]
        where = sample.image_fields[i]
        if isinstance(target, str):
            sample.problem(
                where,
                f"image path {target}",
                "move the image into the image folder (or pass "
                "--image-dir / image_dir for the folder that holds it) and give its relative path.",
            )
            continue
        verdict = verdicts[target if isinstance(target, Path) else hashlib.sha1(target).hexdigest()]
        if verdict:
            shown = _shown(sample.images[i], target)
            sample.problem(where, f"image {shown} {verdict}", _image_fix(verdict))


def _shown(ref: ImageRef, target: Path | bytes) -> str:
    if isinstance(target, bytes):
        return "(embedded bytes)"
    return repr(ref if isinstance(ref, str) else ref.get("path")) + (f" ({target})" if isinstance(ref, str) else "")


def _image_fix(verdict: str) -> str:
    if verdict.startswith("does not exist"):
        return "check the file name and the image folder (--image-dir / image_dir), or remove the sample."
    if "value range is unknown" in verdict:
        return "save it as an 8-bit or 16-bit image (e.g. numpy: (arr * 255).astype('uint8')), or remove it."
    if "pixels" in verdict or "bomb" in verdict:
        return "resize the image (e.g. to 1024 px on the long side) or remove it."
    return "re-export or re-download the image, or remove the sample."


def fingerprint(sample: Sample) -> str:
    """A key equal for exactly duplicated samples (same images, same conversation)."""
    images = [
        posixpath.normpath(r)
        if isinstance(r, str)
        else hashlib.sha1(r["bytes"]).hexdigest()
        if r.get("bytes") is not None
        else r.get("path")
        for r in sample.images or []
    ]
    return json.dumps([images, sample.messages], sort_keys=True)


def mark_duplicates(samples: list[Sample], earlier: list[Sample] = ()) -> None:
    """Warn on exact duplicates within `samples`, and on samples that are also in `earlier` (the training data)."""
    seen = {fingerprint(s): s for s in earlier if not _has_errors(s)}
    n_earlier = len(seen)
    for sample in samples:
        if _has_errors(sample):
            continue
        key = fingerprint(sample)
        first = seen.setdefault(key, sample)
        if first is sample:
            continue
        named = f"sample {first.index}" + (f" (id {first.sample_id!r})" if first.sample_id is not None else "")
        if n_earlier and first.file != sample.file:
            sample.problem(
                None,
                f"is also {named} of the training data {first.file}.",
                "remove it from one of the two: evaluating on training samples measures memorization.",
                warning=True,
            )
        else:
            sample.problem(
                None,
                f"is an exact duplicate of {named}.",
                "delete one copy: a duplicate counts twice in training.",
                warning=True,
            )


def mark_duplicate_ids(samples: list[Sample]) -> None:
    """Warn when two samples share an id: errors and reports that name one of them would be ambiguous."""
    first: dict[str, Sample] = {}
    for sample in samples:
        if sample.sample_id is None:
            continue
        seen = first.setdefault(sample.sample_id, sample)
        if seen is not sample:
            sample.problem(
                "id",
                f"id {sample.sample_id!r} is also the id of sample {seen.index}.",
                "give every sample its own id.",
                warning=True,
            )


def _has_errors(sample: Sample) -> bool:
    return any(not p.warning for p in sample.problems)


def _article(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"
