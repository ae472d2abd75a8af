"""The quickstart's bundled real data: scikit-learn's 1,797 handwritten digits as a user would bring them.

Written to disk as an image folder plus LLaVA-format conversation files, so the quickstart goes
through exactly the same data path as a user's own data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

QUESTION = "What digit is this?"


def write_digits_dataset(out_dir: str | Path, *, eval_size: int = 297, seed: int = 0) -> dict[str, Path]:
    """Write images/ and train.json / eval.json (held out, never trained on); idempotent."""
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    files = {"train": out / "train.json", "eval": out / "eval.json", "image_dir": out / "images"}
    if files["train"].exists() and files["eval"].exists():
        return files
    digits = load_digits()
    files["image_dir"].mkdir(parents=True, exist_ok=True)
    records = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        name = f"digit_{i:04d}.png"
        # 0..16 grey levels -> 0..255, upscaled so the 8x8 strokes survive the image processor
        img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.NEAREST)
        img.convert("RGB").save(files["image_dir"] / name)
        records.append(
            {
                "id": f"digit-{i}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{QUESTION}"},
                    {"from": "gpt", "value": str(int(label))},
                ],
            }
        )
    order = np.random.default_rng(seed).permutation(len(records))
    held_out = {int(i) for i in order[:eval_size]}
    files["eval"].write_text(json.dumps([r for i, r in enumerate(records) if i in held_out], indent=1))
    files["train"].write_text(json.dumps([r for i, r in enumerate(records) if i not in held_out], indent=1))
    return files
