"""The bundled robot-workbench example (examples/workbench): its images are drawn on first use.

`recipes/llava_qlora.yaml` and the family recipes train on examples/workbench/train.json, whose images are PIL
drawings made by examples/workbench/make_images.py rather than committed. A fresh clone running the recipe's
command must not stop at "image not found", so training draws them first when the data is that example's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

WORKBENCH = Path(__file__).resolve().parents[2] / "examples" / "workbench"


def _missing_images(data_file: Path) -> bool:
    rows = json.loads(data_file.read_text())
    for row in rows:
        images = row.get("image") or row.get("images") or []
        for name in [images] if isinstance(images, str) else images:
            if not (data_file.parent / name).is_file():
                return True
    return False


def ensure_workbench_images(*data_files: str | None) -> bool:
    """Draw the workbench images if a data file is the bundled example's and any image is missing; True if drawn.

    Only the example's own folder in this checkout qualifies: nothing next to a user's data is ever run.
    """
    script = WORKBENCH / "make_images.py"
    for data_file in data_files:
        if not data_file or not script.is_file():
            continue
        path = Path(data_file).resolve()
        if path.parent != WORKBENCH or path.suffix != ".json" or not path.is_file() or not _missing_images(path):
            continue
        spec = importlib.util.spec_from_file_location("workbench_make_images", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = module.main(["--out", str(WORKBENCH / "images")])
        logger.info("Drew the workbench example's images in %s (first use).", out)
        return True
    return False
