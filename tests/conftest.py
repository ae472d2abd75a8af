"""Shared fixtures: tiny models and data built locally, once per test session (no download)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Nothing in the suite may reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, while training subprocesses running side by side (DDP tests,
# accelerate launch) oversubscribe the cores: one thread each (torch reads this when it is first imported).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Sample-length caches (vlm_sft.data.lengths) go to a throwaway folder, not the user's ~/.cache/vlm_sft.
os.environ.setdefault("VLM_SFT_CACHE", tempfile.mkdtemp(prefix="vlm_sft_test_cache_"))

REPO = Path(__file__).resolve().parents[1]
# Test-only factories (tests/tiny_families.py) must import in subprocesses too (accelerate launch, and the
# processor shim the tiny Qwen-VL folders load with trust_remote_code).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    from vlm_sft.quickstart.tiny_model import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="session")
def llava_processor(tiny_llava):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    from vlm_sft.quickstart.digits import write_digits_dataset

    return write_digits_dataset(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Build a tiny model of any family once per session, on first use: tiny_dir("qwen2_vl") -> folder."""
    from tiny_families import build_tiny_family

    root = tmp_path_factory.mktemp("tiny_families")
    return lambda family: build_tiny_family(family, root / family)
