"""A draft dataset from a folder of images: one LLaVA sample per image, a template question and an
`[ANNOTATE: ...]` answer to replace (`vlm-sft data init`)."""

from __future__ import annotations

from pathlib import Path

# The lesson's `create_training_data` templates, plus counting, state and structured answers.
DRAFT_QUESTIONS = (
    ("What objects do you see in this image?", "[ANNOTATE: what you see, e.g. 'a Phillips screwdriver and pliers']"),
    ("Describe the workspace layout.", "[ANNOTATE: where things are, e.g. 'the multimeter is on the left, ...']"),
    ("Is there anything that looks unsafe?", "[ANNOTATE: the hazard and what to do, or 'No, nothing looks unsafe.']"),
    ("How many parts are on the bench? Answer with a number.", "[ANNOTATE: the count, e.g. '7']"),
    ("Is the device in the image switched on?", "[ANNOTATE: yes or no, and what shows it (an LED, a display)]"),
    (
        'List the tools as JSON with keys "tools" and "count".',
        '[ANNOTATE: JSON, e.g. {"tools": ["pliers"], "count": 1}]',
    ),
)


def find_images(image_dir: Path) -> list[Path]:
    """Image files under image_dir (recursively, by name), with every extension PIL can open."""
    from PIL import Image

    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}  # not save-only
    return sorted(
        p
        for p in image_dir.rglob("*")
        if p.is_file()
        and p.suffix.lower() in extensions
        and not any(part.startswith(".") for part in p.relative_to(image_dir).parts)
    )


def draft_records(images: list[Path], base: Path, image_dir: Path) -> list[dict]:
    """LLaVA samples with template questions and `[ANNOTATE: ...]` answers; paths relative to `base`."""
    records = []
    for i, image in enumerate(images):
        question, answer = DRAFT_QUESTIONS[i % len(DRAFT_QUESTIONS)]
        records.append(
            {
                "id": image.relative_to(image_dir).with_suffix("").as_posix(),
                "image": image.relative_to(base).as_posix(),
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    return records
