"""Sample lengths: computed once with the processor, cached on disk under the right key, and used to group batches."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from vlm_sft.collator import VisionSFTCollator
from vlm_sft.data import lengths as lengths_module
from vlm_sft.data.lengths import (
    padding_fraction,
    padding_with_and_without_grouping,
    prepare_length_grouping,
    sample_lengths,
    store_lengths,
)
from vlm_sft.data.loading import load_conversations


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("VLM_SFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "lengths"


@pytest.fixture(scope="module")
def varied(tmp_path_factory, digits: dict[str, Path]) -> Path:
    """64 samples of very different lengths: digits with long or short questions, and text-only ones."""
    records = json.loads(Path(digits["train"]).read_text())[:64]
    rows = []
    for i, record in enumerate(records):
        padding = " ".join(["Look closely."] * (i % 9))
        if i % 4 == 0:
            convs = [{"from": "human", "value": f"Count to {i % 7 + 1}. {padding}"}]
            convs.append({"from": "gpt", "value": " ".join(str(k) for k in range(i % 7 + 1))})
            rows.append({"id": f"text-{i}", "conversations": convs})
        else:
            convs = [{"from": "human", "value": f"<image>\nWhat digit is this? {padding}"}, record["conversations"][1]]
            rows.append({"id": record["id"], "image": record["image"], "conversations": convs})
    path = tmp_path_factory.mktemp("varied") / "varied.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def dataset(varied: Path, digits: dict[str, Path]):
    return load_conversations(varied, digits["image_dir"])


class CountingCollator(VisionSFTCollator):
    """Counts the rows it was asked to measure (to see what the cache spared)."""

    measured = 0

    def sample_lengths(self, rows):
        type(self).measured += len(rows)
        return super().sample_lengths(rows)


def test_padding_fraction_arithmetic():
    lengths = [1, 2, 3, 4]
    # batches [1, 4] -> 3 of 8 slots are padding, [2, 3] -> 1 of 6; sorted: [1, 2] -> 1 of 4, [3, 4] -> 1 of 8
    assert padding_fraction(lengths, [0, 3, 1, 2], 2) == pytest.approx(4 / 14)
    assert padding_fraction(lengths, [0, 1, 2, 3], 2) == pytest.approx(2 / 12)
    assert padding_fraction([5, 5, 5], [0, 1, 2], 2) == 0.0


def test_lengths_are_what_the_model_sees_and_computed_once(dataset, llava_processor, cache):
    collator = CountingCollator(llava_processor)
    CountingCollator.measured = 0
    lengths = sample_lengths(dataset, collator)
    rows = [dataset[i] for i in range(len(dataset))]
    assert lengths == collator(rows)["attention_mask"].sum(dim=1).tolist()  # text + 16 image tokens, as trained
    assert len(set(lengths)) > 5
    assert CountingCollator.measured == len(dataset) and len(list(cache.glob("*.json"))) == 1

    CountingCollator.measured = 0
    assert sample_lengths(dataset, collator) == lengths and CountingCollator.measured == 0  # from the cache


def test_cache_key_follows_data_images_and_processor(dataset, llava_processor, cache, digits):
    collator = VisionSFTCollator(llava_processor)
    sample_lengths(dataset, collator)
    key = lengths_module._cache_path(dataset, collator)
    assert key.is_file()
    # Other rows -> other fingerprint.
    assert lengths_module._cache_path(dataset.select(range(10)), collator) != key
    # An image file rewritten in place keeps the rows but may change a length (dynamic-resolution models).
    image = Path(digits["image_dir"]) / json.loads(Path(digits["train"]).read_text())[1]["image"]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert lengths_module._cache_path(dataset, collator) != key
    finally:
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert lengths_module._cache_path(dataset, collator) == key
    # Another chat template or collator policy -> other lengths.
    assert lengths_module._cache_path(dataset, VisionSFTCollator(llava_processor, add_missing_eos=False)) != key
    original = llava_processor.chat_template
    llava_processor.chat_template = original + "{{ ' ' }}"
    try:
        assert lengths_module._cache_path(dataset, VisionSFTCollator(llava_processor)) != key
    finally:
        llava_processor.chat_template = original


def test_lengths_of_kept_rows_are_stored_not_recomputed(dataset, llava_processor, cache):
    """After too_long: drop, the kept rows' lengths come from the first pass (what train._enforce_max_length does)."""
    collator = CountingCollator(llava_processor)
    lengths = sample_lengths(dataset, collator)
    keep = [i for i, n in enumerate(lengths) if n < 40]
    kept = dataset.select(keep)
    store_lengths(kept, collator, [lengths[i] for i in keep])
    CountingCollator.measured = 0
    assert sample_lengths(kept, collator) == [lengths[i] for i in keep] and CountingCollator.measured == 0


def test_grouping_reduces_padding(dataset, llava_processor, cache):
    lengths = sample_lengths(dataset, VisionSFTCollator(llava_processor))
    random_pad, grouped_pad = padding_with_and_without_grouping(lengths, per_device_batch_size=4, seed=0)
    assert grouped_pad < random_pad / 2, (random_pad, grouped_pad)


def _trainer(model_dir: Path, processor, train_ds, tmp_path: Path, **overrides):
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        per_device_train_batch_size=4,
        report_to="none",
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        activation_checkpointing=False,
        seed=3,
        **overrides,
    )
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    collator = VisionSFTCollator(processor)

    def make(train_dataset):
        return SFTTrainer(
            model=model, args=args, train_dataset=train_dataset, data_collator=collator, processing_class=processor
        )

    return args, collator, make


def test_trls_vision_path_drops_the_length_column_unless_kept(dataset, tiny_llava, llava_processor, cache, tmp_path):
    """The trap: TRL keeps only messages/images for vision data, so transformers' sampler cannot find the lengths."""
    args, collator, make = _trainer(tiny_llava, llava_processor, dataset, tmp_path)
    with_column = dataset.add_column("length", sample_lengths(dataset, collator))
    with pytest.raises(ValueError, match="Can only automatically infer lengths"):
        make(with_column).get_train_dataloader()


def test_training_batches_are_grouped(dataset, tiny_llava, llava_processor, cache, tmp_path, caplog):
    args, collator, make = _trainer(tiny_llava, llava_processor, dataset, tmp_path)
    with caplog.at_level(logging.INFO, logger="vlm_sft.data.lengths"):
        train_ds, _ = prepare_length_grouping(dataset, None, collator, args)
    assert "in random batches" in caplog.text and "group_by_length" in caplog.text
    assert args.remove_unused_columns is False and train_ds["length"] == sample_lengths(dataset, collator)

    loader = make(train_ds).get_train_dataloader()
    slots = padding = 0
    for batch in loader:
        mask = batch["attention_mask"]
        slots += mask.numel()
        padding += int((mask == 0).sum())
    random_pad, _ = padding_with_and_without_grouping(train_ds["length"], per_device_batch_size=4, seed=3)
    assert slots and padding / slots < random_pad / 2, (padding / slots, random_pad)
