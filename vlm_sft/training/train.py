"""Training: recipe values -> validated data -> collator -> (Q)LoRA model -> `trl.SFTTrainer` -> output_dir."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from accelerate import PartialState
from transformers import AutoConfig, AutoProcessor, TrainerCallback, set_seed
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser

from vlm_sft.collator import SampleTooLongError, VisionSFTCollator
from vlm_sft.data.lengths import prepare_length_grouping, sample_lengths, store_lengths
from vlm_sft.data.loading import DataError, load_splits
from vlm_sft.evaluation.plots import write_loss_plot
from vlm_sft.hub.adapters import push_after_training, take_over_push
from vlm_sft.hub.model_card import write_training_card
from vlm_sft.modeling.parameters import adapter_size_mb, format_table, trainable_parameters, write_report
from vlm_sft.modeling.resolution import ImageSettings, ResolutionError, configure_processor
from vlm_sft.modeling.setup import apply_lora, keep_frozen_vision_tower_out_of_backward, load_model
from vlm_sft.quickstart.workbench import ensure_workbench_images
from vlm_sft.training.checkpoints import (
    CheckpointError,
    CheckpointManifestCallback,
    OutputDirError,
    check_output_dir,
    clear_run_results,
    remove_incomplete_after,
    resolve_resume,
    resume_requested,
)
from vlm_sft.training.config import VisionArguments
from vlm_sft.training.distributed import (
    EngineError,
    check_process_group,
    check_quantization,
    detect_engine,
    unify_float_dtype,
)

logger = logging.getLogger(__name__)


class FrozenVisionTowerCallback(TrainerCallback):
    """At train begin (after the Trainer enabled activation checkpointing and its input-grad hooks), keep the
    frozen vision tower out of the backward pass (`vlm_sft.model.keep_frozen_vision_tower_out_of_backward`)."""

    def __init__(self, parts) -> None:
        self.parts = parts

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and keep_frozen_vision_tower_out_of_backward(model, self.parts):
            logger.info("Frozen vision tower kept out of the backward pass.")


RecipeArgs = tuple[ScriptArguments, SFTConfig, ModelConfig, VisionArguments]


def parse_recipe(argv: list[str] | None = None) -> RecipeArgs:
    """Parse `recipe.yaml [--key value ...]` (or TRL's `--config recipe.yaml`); CLI keys override YAML keys.

    Unknown keys, in the YAML or on the command line, are errors that name the key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, VisionArguments))
    args = parser.parse_args_and_config(argv)
    check_supported(*args)
    return args


# Keys TRL's dataclasses accept that this pipeline would otherwise ignore: name ours instead.
_UNSUPPORTED = {
    "packing": (False, "vision samples are never packed (image tokens would be cut)"),
    "padding_free": (False, "vision batches are padded to their longest sample"),
    "assistant_only_loss": (False, "the loss is always on assistant replies only (see train_on)"),
    "completion_only_loss": (None, "the loss is always on assistant replies only (see train_on)"),
    "dataset_config": (None, "name the data with train_file / eval_file"),
    "dataset_streaming": (False, "datasets are loaded and validated in full before training"),
    "dataset_train_split": ("train", "give the split's file or folder as train_file"),
    "dataset_test_split": ("test", "give eval_file or eval_fraction"),
}


def check_supported(script_args, training_args, model_args, vision) -> None:
    """Refuse recipe values this pipeline does not honour, rather than ignore them silently."""
    if not model_args.use_peft:
        raise ValueError(
            "use_peft is false: vlm-sft trains LoRA / QLoRA adapters and has no full fine-tuning path. "
            "Set `use_peft: true` in the recipe (r, alpha, dropout, rsLoRA and DoRA come from its lora_* keys)."
        )
    for key, (default, instead) in _UNSUPPORTED.items():
        value = getattr(script_args if hasattr(script_args, key) else training_args, key, default)
        if value != default:
            raise ValueError(f"{key}={value!r} is not supported by vlm-sft: {instead}. Remove it from the recipe.")


def _enforce_max_length(dataset, collator: VisionSFTCollator, name: str):
    """Apply the too_long policy to a whole split before training, so no step fails or silently drops."""
    if dataset is None or collator.max_length is None:
        return dataset
    lengths = sample_lengths(dataset, collator)  # computed once, cached; length grouping reuses them
    too_long = [i for i, n in enumerate(lengths) if n > collator.max_length]
    if not too_long:
        return dataset
    shown = too_long[:10]
    # Name samples by their id where the data has one (index only: the image column is never decoded here).
    ids = dataset.select_columns("id").select(shown)["id"] if "id" in dataset.column_names else [None] * len(shown)
    listed = ", ".join(
        f"#{i} ({lengths[i]} tokens)" if sid is None else f"sample {sid!r} (#{i}, {lengths[i]} tokens)"
        for i, sid in zip(shown, ids, strict=True)
    )
    if collator.too_long == "error":
        raise SampleTooLongError(
            f"{len(too_long)} {name} samples are longer than max_length={collator.max_length} (text plus image "
            f"tokens): {listed}{' ...' if len(too_long) > 10 else ''}. Raise max_length, shorten them, or set "
            "too_long: drop. Samples are never truncated (that would cut through image tokens)."
        )
    logger.warning("Dropping %d of %d %s samples over max_length: %s", len(too_long), len(dataset), name, listed)
    keep = sorted(set(range(len(dataset))) - set(too_long))
    kept = dataset.select(keep)
    store_lengths(kept, collator, [lengths[i] for i in keep])
    return kept


def _setup_data(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig, vision):
    """Validated splits, the processor and the collator; the too_long policy applied to whole splits."""
    if script_args.dataset_name and not vision.train_file:
        vision.train_file = script_args.dataset_name  # a Hub dataset id or a save_to_disk folder
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    # Resolution keys go into the processor once; it is saved to output_dir, so eval/infer/merge see the same images.
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    configure_processor(processor, config, ImageSettings.from_args(vision))  # a key the family lacks: refused here
    if PartialState().is_main_process:  # a fresh clone has no drawings yet; one process draws them
        ensure_workbench_images(vision.train_file, vision.eval_file)
    PartialState().wait_for_everyone()
    train_ds, eval_ds = load_splits(vision, seed=training_args.seed)
    pad_multiple = training_args.pad_to_multiple_of  # TRL's "auto" pads only on Neuron devices
    collator = VisionSFTCollator(
        processor,
        max_length=training_args.max_length,
        too_long=vision.too_long,
        train_on=vision.train_on,
        pad_to_multiple_of=None if pad_multiple in (None, "auto") else int(pad_multiple),
    )
    train_ds = _enforce_max_length(train_ds, collator, "train")
    eval_ds = _enforce_max_length(eval_ds, collator, "eval")
    if eval_ds is None and training_args.eval_strategy != "no":
        logger.warning("No eval set (eval_file / eval_fraction): turning eval_strategy off.")
        training_args.eval_strategy = "no"
    return train_ds, eval_ds, processor, collator


def _prepare_output_dir(training_args: SFTConfig, vision: VisionArguments) -> str | None:
    """Resume point (or None); refuses another run's output_dir unless asked, then clears what is replaced."""
    resume_from = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    stale = check_output_dir(
        training_args.output_dir,
        overwrite=vision.overwrite_output_dir,
        resuming=resume_from is not None,  # `true` with nothing to resume must not overwrite a finished run
    )
    state = PartialState()
    state.wait_for_everyone()  # every rank has looked before the main process deletes anything
    if state.is_main_process:
        clear_run_results(stale)
        if resume_requested(training_args.resume_from_checkpoint):
            remove_incomplete_after(training_args.output_dir, resume_from)
    state.wait_for_everyone()
    return resume_from


def _setup_model(training_args: SFTConfig, model_args: ModelConfig, vision: VisionArguments, engine):
    """Base (16-bit or 4/8-bit), vision tower frozen, LoRA on the language model, projector trained fully."""
    model, parts = load_model(
        model_args,
        trust_remote_code=training_args.trust_remote_code,
        gradient_checkpointing=training_args.activation_checkpointing,
    )
    model = apply_lora(model, parts, model_args, vision)
    if engine.shards_weights and model_args.dtype not in (None, "auto"):
        unify_float_dtype(model, model_args.dtype)  # FSDP / ZeRO-3 need one dtype (vlm_sft.training.distributed)
    return model, parts


def _save(trainer: SFTTrainer, processor, collator: VisionSFTCollator, report: dict, out: Path) -> None:
    """Adapter + processor (chat template included) + report + log + loss plot."""
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the final adapter is gathered into one file (PEFT docs)
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    trainer.save_state()  # trainer_state.json: the full training log (log_history)
    write_loss_plot(trainer, out)  # loss.png: training (and eval) loss against steps, main process only
    trainer.log_metrics("train", trainer.state.log_history[-1])
    if trainer.is_world_process_zero():
        processor.save_pretrained(out)
        write_report(report, out)
        print(format_table(report))
        print(f"adapter: {adapter_size_mb(out):.2f} MB in {out}")
        if collator.dropped:
            print(f"dropped {collator.dropped} samples over max_length during training")


def train(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig, vision: VisionArguments):
    """Run one training job; returns the output directory holding adapter, processor, report, card and logs."""
    set_seed(training_args.seed)

    # ---- Data, launch and output_dir checks: every refusal comes before anything is written.
    train_ds, eval_ds, processor, collator = _setup_data(script_args, training_args, model_args, vision)
    check_process_group(training_args)  # N launched processes that would each train alone
    engine = detect_engine(training_args)
    check_quantization(model_args, engine)  # 8-bit / 4-bit without float storage under ZeRO-3 or FSDP
    resume_from = _prepare_output_dir(training_args, vision)
    train_ds, eval_ds = prepare_length_grouping(train_ds, eval_ds, collator, training_args)

    # ---- Model.
    model, parts = _setup_model(training_args, model_args, vision, engine)
    report = trainable_parameters(model, parts)
    logger.info("Trainable parameters:\n%s", format_table(report))

    # ---- Train. The Trainer's own push would upload TRL's text-model card and checkpoints: ours runs at the end.
    hub_push = take_over_push(training_args, model_args, vision)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=processor,
        callbacks=[
            CheckpointManifestCallback(),  # marks each checkpoint complete once every rank has written
            FrozenVisionTowerCallback(parts),
        ],
    )
    trainer.train(resume_from_checkpoint=resume_from)

    # ---- Save, then the model card (PEFT and TRL each write their own README.md on save) and push.
    out = Path(training_args.output_dir)
    _save(trainer, processor, collator, report, out)
    if trainer.is_world_process_zero():
        num_eval = len(eval_ds) if eval_ds is not None else None
        write_training_card(
            out, script_args, training_args, model_args, vision, num_train=len(train_ds), num_eval=num_eval
        )
        if hub_push is not None:
            print(f"pushed: {push_after_training(out, hub_push)}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point shared by scripts/sft_vlm.py and `vlm-sft train`: 1 for bad data or state, 2 for a bad recipe."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        script_args, training_args, model_args, vision = parse_recipe(argv)
    except (ValueError, OSError) as err:  # unknown key, bad value, missing recipe: a usage error, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        train(script_args, training_args, model_args, vision)
    except ResolutionError as err:  # a resolution key the family does not take: the recipe is wrong
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DataError, SampleTooLongError, OutputDirError, CheckpointError, EngineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
