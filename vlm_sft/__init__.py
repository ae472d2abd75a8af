"""vlm-sft: teach a pretrained vision-language model about your world with LoRA / QLoRA.

    from vlm_sft import VisionSFTCollator, load_splits, parse_recipe, train

The names users import; each is imported on first use (PEP 562), so `import vlm_sft` and light commands
such as `vlm-sft data validate` do not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlm_sft.logs import quiet_library_notices

__version__ = "0.1.0"

__all__ = [
    "RecipeArgs",
    "VisionArguments",
    "VisionSFTCollator",
    "load_conversations",
    "load_splits",
    "parse_recipe",
    "train",
]

# public name -> the module that defines it
_EXPORTS = {
    "VisionSFTCollator": "vlm_sft.collator",
    "load_conversations": "vlm_sft.data.loading",
    "load_splits": "vlm_sft.data.loading",
    "VisionArguments": "vlm_sft.training.config",
    "RecipeArgs": "vlm_sft.training.train",
    "parse_recipe": "vlm_sft.training.train",
    "train": "vlm_sft.training.train",
}

if TYPE_CHECKING:
    from vlm_sft.collator import VisionSFTCollator
    from vlm_sft.data.loading import load_conversations, load_splits
    from vlm_sft.training.config import VisionArguments
    from vlm_sft.training.train import RecipeArgs, parse_recipe, train

# Installed before any library is imported: bitsandbytes prints its notice at import time.
quiet_library_notices()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlm_sft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
