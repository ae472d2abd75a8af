"""Shared by the hostile-input tests (issue 13): output snapshots, the one-error-line rule, tiny samples."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(err: str) -> str:
    """The single `error:` line of stderr, after checking there is no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def llava_row(i: int, answer: str = "a cat", image: str | None = "img.png", **extra) -> dict:
    human = "<image>\nWhat is this?" if image is not None else "What is this?"
    row = {"id": f"s{i}", "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}
    if image is not None:
        row["image"] = image
    return {**row, **extra}


def image_folder(folder: Path) -> Path:
    """`folder` with one small valid image, img.png."""
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / "img.png")
    return folder
