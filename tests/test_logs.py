"""Logging: INFO on the main process, the recipe's replica level elsewhere; two library notices silenced, no more."""

from __future__ import annotations

import logging
import warnings

from trl import SFTConfig

from vlm_sft.logs import quiet_library_notices, setup_logging


def test_library_notices_are_dropped_and_nothing_else(caplog):
    quiet_library_notices()
    quiet_library_notices()  # idempotent: one filter, not two
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(bnb.filters) == 1
    with caplog.at_level(logging.WARNING, logger=bnb.name):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "No module")
        bnb.warning("Something else went wrong in the CPU backend")
    assert [r.getMessage() for r in caplog.records] == ["Something else went wrong in the CPU backend"]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_library_notices()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1)
        warnings.warn("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated", DeprecationWarning, stacklevel=1)
    assert [(w.category, str(w.message)[:24]) for w in seen] == [
        (FutureWarning, "`gradient_checkpointing`"),  # a recipe key the user can rename: still shown
        (DeprecationWarning, "`is_gradient_checkpointi"),  # other categories are not touched
    ]


def test_main_process_logs_info_other_ranks_warning(tmp_path, monkeypatch):
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    package = logging.getLogger("vlm_sft")
    level_before = package.level
    try:
        assert setup_logging(args) == logging.INFO and package.level == logging.INFO
        # On another rank `should_log` is false (TrainingArguments: process_index != 0 with log_on_each_node off).
        monkeypatch.setattr(type(args), "should_log", property(lambda self: False))
        assert setup_logging(args) == logging.WARNING and package.level == logging.WARNING
        args.log_level_replica = "error"
        assert setup_logging(args) == logging.ERROR
        assert setup_logging() == logging.INFO  # commands without a recipe
    finally:
        package.setLevel(level_before)
