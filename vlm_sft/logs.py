"""Logging as the Hugging Face recipes set it up, and the library notices a user cannot act on, silenced narrowly.

Main process at INFO, other ranks at `training_args.get_process_log_level()` (WARNING unless the recipe's
`log_level_replica` says otherwise), so N processes do not print N copies of every line.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# bitsandbytes (backends/cpu/ops.py) logs this at import on CPUs with AVX512-BF16 when the optional `kernels`
# package is missing; it then uses its own CPU kernel, and `kernels` would fetch code from the Hub. Nothing to do.
_BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
# transformers 5 deprecates `model.is_gradient_checkpointing`; PEFT (PeftModel.__init__) and TRL still read it.
_LIBRARY_FUTURE_WARNINGS = (r"`is_gradient_checkpointing` is deprecated",)


class _DropMessage(logging.Filter):
    """Drops records whose message starts with `prefix`; every other record of the logger passes."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_library_notices() -> None:
    """Silence the library notices above, and only those (idempotent; before bitsandbytes is imported)."""
    bnb = logging.getLogger(_BNB_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in bnb.filters):
        bnb.addFilter(_DropMessage(_BNB_NOTICE))
    for message in _LIBRARY_FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def setup_logging(training_args: Any | None = None) -> int:
    """Log to stderr with timestamps; returns the level of this process (INFO on the main one).

    With `training_args`, other ranks log at `get_process_log_level()`, and transformers / datasets follow
    the recipe's `log_level` / `log_level_replica` (their own default, WARNING, when the recipe sets none).
    """
    level = logging.INFO
    if training_args is not None:
        library_level = training_args.get_process_log_level()
        if not training_args.should_log:  # not the main process
            level = library_level
        import datasets
        import transformers

        datasets.utils.logging.set_verbosity(library_level)
        transformers.utils.logging.set_verbosity(library_level)
    logging.basicConfig(format=LOG_FORMAT, level=level)  # a no-op where logging is configured already (pytest)
    logging.getLogger("vlm_sft").setLevel(level)
    return level
