"""Training: recipe values -> validated data -> collator -> (Q)LoRA model -> `trl.SFTTrainer` -> output_dir."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import AutoProcessor, set_seed
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser

from vlm_sft.collator import SampleTooLongError, VisionSFTCollator
from vlm_sft.config import VisionArguments
from vlm_sft.data import DataError, load_splits
from vlm_sft.model import apply_lora, load_model
from vlm_sft.report import adapter_size_mb, format_table, trainable_parameters, write_report

logger = logging.getLogger(__name__)

RecipeArgs = tuple[ScriptArguments, SFTConfig, ModelConfig, VisionArguments]


def parse_recipe(argv: list[str] | None = None) -> RecipeArgs:
    """Parse `recipe.yaml [--key value ...]` (or TRL's `--config recipe.yaml`); CLI keys override YAML keys.

    Unknown keys, in the YAML or on the command line, are errors that name the key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, VisionArguments))
    return parser.parse_args_and_config(argv)


def _enforce_max_length(dataset, collator: VisionSFTCollator, name: str, batch_size: int = 32):
    """Apply the too_long policy to a whole split before training, so no step fails or silently drops."""
    if dataset is None or collator.max_length is None:
        return dataset
    lengths: list[int] = []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        lengths.extend(collator.sample_lengths(rows))
    too_long = [i for i, n in enumerate(lengths) if n > collator.max_length]
    if not too_long:
        return dataset
    listed = ", ".join(f"#{i} ({lengths[i]} tokens)" for i in too_long[:10])
    if collator.too_long == "error":
        raise SampleTooLongError(
            f"{len(too_long)} {name} samples are longer than max_length={collator.max_length} (text plus image "
            f"tokens): {listed}{' ...' if len(too_long) > 10 else ''}. Raise max_length, shorten them, or set "
            "too_long: drop. Samples are never truncated (that would cut through image tokens)."
        )
    logger.warning("Dropping %d of %d %s samples over max_length: %s", len(too_long), len(dataset), name, listed)
    keep = sorted(set(range(len(dataset))) - set(too_long))
    return dataset.select(keep)


def train(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig, vision: VisionArguments):
    """Run one training job; returns the output directory holding adapter, processor, report and logs."""
    set_seed(training_args.seed)

    # ---- Data: validated before anything is written to output_dir.
    if script_args.dataset_name and not vision.train_file:
        vision.train_file = script_args.dataset_name  # a Hub dataset id or a save_to_disk folder
    train_ds, eval_ds = load_splits(vision, seed=training_args.seed)
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    collator = VisionSFTCollator(
        processor, max_length=training_args.max_length, too_long=vision.too_long, train_on=vision.train_on
    )
    train_ds = _enforce_max_length(train_ds, collator, "train")
    eval_ds = _enforce_max_length(eval_ds, collator, "eval")
    if eval_ds is None and training_args.eval_strategy != "no":
        logger.warning("No eval set (eval_file / eval_fraction): turning eval_strategy off.")
        training_args.eval_strategy = "no"

    # ---- Model: base (16-bit or 4/8-bit), vision tower frozen, LoRA on the language model, projector trained.
    model, parts = load_model(
        model_args,
        trust_remote_code=training_args.trust_remote_code,
        gradient_checkpointing=training_args.activation_checkpointing,
    )
    model = apply_lora(model, parts, model_args, vision)
    report = trainable_parameters(model, parts)
    logger.info("Trainable parameters:\n%s", format_table(report))

    # ---- Train.
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # ---- Save: adapter + processor (chat template included) + report + log, from the main process.
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))
    trainer.save_state()  # trainer_state.json: the full training log (log_history)
    trainer.log_metrics("train", trainer.state.log_history[-1])
    if trainer.is_world_process_zero():
        processor.save_pretrained(out)
        write_report(report, out)
        print(format_table(report))
        print(f"adapter: {adapter_size_mb(out):.2f} MB in {out}")
        if collator.dropped:
            print(f"dropped {collator.dropped} samples over max_length during training")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point shared by scripts/sft_vlm.py and `vlm-sft train`; data errors exit 1 with the report."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    script_args, training_args, model_args, vision = parse_recipe(argv)
    try:
        train(script_args, training_args, model_args, vision)
    except (DataError, SampleTooLongError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
