"""Training: recipe values -> validated data -> collator -> (Q)LoRA model -> `trl.SFTTrainer` -> output_dir."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NamedTuple

from accelerate import PartialState
from transformers import AutoConfig, AutoProcessor, EarlyStoppingCallback, TrainerCallback, set_seed
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser

from vlm_sft.collator import SampleTooLongError, VisionSFTCollator
from vlm_sft.data.lengths import prepare_length_grouping, sample_lengths, store_lengths
from vlm_sft.data.loading import DataError, load_splits
from vlm_sft.evaluation.metrics import FLAT_NAMES, LOWER_IS_BETTER
from vlm_sft.evaluation.plots import write_loss_plot
from vlm_sft.hub.adapters import PushError, push_after_training, take_over_push
from vlm_sft.hub.availability import ModelUnavailableError, check_model_available, looks_local
from vlm_sft.hub.model_card import write_training_card
from vlm_sft.logs import setup_logging
from vlm_sft.modeling.parameters import adapter_size_mb, format_table, trainable_parameters, write_report
from vlm_sft.modeling.precision import align_trainable_dtype, check_precision
from vlm_sft.modeling.resolution import ImageSettings, ResolutionError, configure_processor
from vlm_sft.modeling.setup import LoraTargetError, apply_lora, keep_frozen_vision_tower_out_of_backward, load_model
from vlm_sft.quickstart.workbench import ensure_workbench_images
from vlm_sft.training.checkpoints import (
    CheckpointError,
    CheckpointManifestCallback,
    OutputDirError,
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
from vlm_sft.training.heldout import build_record, write_record
from vlm_sft.training.optimizer import PartLearningRates
from vlm_sft.training.output_dir import OutputDir, RunMarkerCallback
from vlm_sft.training.recipe_checks import (
    check_command_line,
    check_model_path,
    check_recipe_file,
    check_values,
    explain_unknown_keys,
    known_keys,
    raise_usage_error,
)
from vlm_sft.training.scoring import GenerationScorer, ScoredSFTTrainer, kept_step

logger = logging.getLogger(__name__)


class FrozenVisionTowerCallback(TrainerCallback):
    """At train begin (after the Trainer enabled activation checkpointing and its input-grad hooks), keep the frozen
    vision tower out of the backward pass (`vlm_sft.modeling.setup.keep_frozen_vision_tower_out_of_backward`)."""

    def __init__(self, parts) -> None:
        self.parts = parts

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and keep_frozen_vision_tower_out_of_backward(model, self.parts):
            logger.info("Frozen vision tower kept out of the backward pass.")


class RecipeArgs(NamedTuple):
    """A parsed recipe: TRL's three argument dataclasses and ours, by name (unpacks in this order)."""

    script_args: ScriptArguments
    training_args: SFTConfig
    model_args: ModelConfig
    vision: VisionArguments


def parse_recipe(argv: list[str] | None = None) -> RecipeArgs:
    """Parse `recipe.yaml [--key value ...]` (or TRL's `--config recipe.yaml`); CLI keys override YAML keys.

    Unknown keys, in the YAML or on the command line, are errors that name the key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    check_command_line(argv)
    if "--config" in argv[:-1]:
        check_recipe_file(argv[argv.index("--config") + 1])
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, VisionArguments))
    parser.error = raise_usage_error
    try:
        recipe = RecipeArgs(*parser.parse_args_and_config(argv))
    except ValueError as err:
        raise ValueError(explain_unknown_keys(str(err), known_keys(parser))) from None
    check_supported(*recipe)
    check_values(recipe.training_args, recipe.model_args)
    return recipe


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
    check_precision(model_args, training_args)  # quantization x mixed precision x dtype, before anything loads
    check_scored_selection(training_args, vision)


def _too_long(dataset, collator: VisionSFTCollator) -> dict[int, int]:
    """{position: tokens} of the samples over max_length (lengths are cached, so asking twice costs nothing)."""
    if dataset is None or collator.max_length is None:
        return {}
    return {i: n for i, n in enumerate(sample_lengths(dataset, collator)) if n > collator.max_length}


def check_scored_selection(training_args: SFTConfig, vision: VisionArguments) -> None:
    """eval_generate, metric_for_best_model, early stopping and part learning rates: refuse what would fail late."""
    evaluates = training_args.eval_strategy != "no"
    if vision.eval_generate and not evaluates:  # a recipe may keep it on for the runs that turn evaluation on
        logger.info("eval_generate is on but eval_strategy is no: nothing is scored during this run.")
    metric = (training_args.metric_for_best_model or "").removeprefix("eval_")
    if metric in FLAT_NAMES.values() and evaluates and not vision.eval_generate:
        raise ValueError(
            f"metric_for_best_model={training_args.metric_for_best_model} is a generation score: "
            "set eval_generate: true (or use eval_loss)."
        )
    if metric in LOWER_IS_BETTER:
        training_args.greater_is_better = False  # transformers guesses "higher is better" for anything not a loss
    if vision.early_stopping_patience is not None and not (evaluates and training_args.metric_for_best_model):
        raise ValueError(
            "early_stopping_patience needs evaluations and a score: set eval_strategy (epoch or steps), "
            "metric_for_best_model (e.g. eval_exact_match), and load_best_model_at_end: true to keep the best step."
        )
    if vision.vision_tower_lr is not None and not (vision.train_vision_tower or vision.lora_on_vision_tower):
        raise ValueError(
            "vision_tower_lr is set but the vision tower is not trained: "
            "set train_vision_tower or lora_on_vision_tower, or remove vision_tower_lr."
        )


def _enforce_max_length(dataset, collator: VisionSFTCollator, name: str):
    """Apply the too_long policy to a whole split before training, so no step fails or silently drops."""
    if dataset is None or collator.max_length is None:
        return dataset
    lengths = sample_lengths(dataset, collator)  # computed once, cached; length grouping reuses them
    too_long = list(_too_long(dataset, collator))
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
    check_model_available(model_args.model_name_or_path, model_args.model_revision)  # seconds, not minutes
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
    # The eval split as training holds it out (after the length policy), recorded for `vlm-sft eval`.
    held_out = None if eval_ds is None else build_record(training_args, vision, eval_ds, _too_long(eval_ds, collator))
    eval_ds = _enforce_max_length(eval_ds, collator, "eval")
    if eval_ds is None and training_args.eval_strategy != "no":
        logger.warning("No eval set (eval_file / eval_fraction): turning eval_strategy off.")
        training_args.eval_strategy = "no"
    return train_ds, eval_ds, processor, collator, held_out


def _replace_previous(training_args: SFTConfig, out_dir: OutputDir, previous: list, resume_from: str | None) -> None:
    """Move the previous run's results aside (restored if this run fails before its first save)."""
    state = PartialState()
    state.wait_for_everyone()  # every rank has checked before the main process moves anything
    if state.is_main_process:
        out_dir.set_aside(previous)
        if resume_requested(training_args.resume_from_checkpoint):
            remove_incomplete_after(training_args.output_dir, resume_from)
    state.wait_for_everyone()


def _setup_model(training_args: SFTConfig, model_args: ModelConfig, vision: VisionArguments, engine):
    """Base (16-bit or 4/8-bit), vision tower frozen, LoRA on the language model, projector trained fully."""
    model, parts = load_model(
        model_args,
        trust_remote_code=training_args.trust_remote_code,
        gradient_checkpointing=training_args.activation_checkpointing,
        use_cpu=training_args.use_cpu,  # k-bit weights cannot move after loading: a GPU machine told to use the CPU
    )
    model = apply_lora(model, parts, model_args, vision)
    if engine.shards_weights and model_args.dtype not in (None, "auto"):
        unify_float_dtype(model, model_args.dtype)  # FSDP / ZeRO-3 need one dtype (vlm_sft.training.distributed)
    return model, parts


def check_scored_engine(training_args: SFTConfig, vision: VisionArguments, engine) -> None:
    """eval_generate needs whole weights on every rank: refused under FSDP and ZeRO-3."""
    if vision.eval_generate and training_args.eval_strategy != "no" and engine.shards_weights:
        # Each rank would generate from its shard of the weights; gathering them for every token is not wired up.
        raise EngineError(
            f"eval_generate is not supported under {engine.describe()} (weights sharded across ranks): train with "
            "DDP or ZeRO-2, or set eval_generate: false and score the saved adapter with `vlm-sft eval`."
        )


def _trainer_extras(training_args: SFTConfig, vision: VisionArguments, parts, eval_ds, processor) -> dict:
    """ScoredSFTTrainer's scorer and per-part learning rates, and the early-stopping callback, from the recipe."""
    scorer = None
    if vision.eval_generate and eval_ds is not None:
        scorer = GenerationScorer(
            eval_ds,
            processor,
            limit=vision.eval_generate_limit,
            max_new_tokens=vision.eval_generate_max_new_tokens,
            batch_size=training_args.per_device_eval_batch_size,
            seed=training_args.seed,
        )
    part_lrs = PartLearningRates(
        parts,
        training_args.learning_rate,
        training_args.weight_decay,
        projector_lr=vision.projector_lr,
        vision_tower_lr=vision.vision_tower_lr,
        loraplus_lr_ratio=vision.loraplus_lr_ratio,
    )
    callbacks = []
    if vision.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=vision.early_stopping_patience))
    return {"scorer": scorer, "part_lrs": part_lrs if part_lrs.active else None, "callbacks": callbacks}


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
    if looks_local(model_args.model_name_or_path):  # the adapter records its base: usable from any folder
        model_args.model_name_or_path = str(Path(model_args.model_name_or_path).expanduser().resolve())
    # One run per output_dir: a second one is refused at once, before it loads anything.
    out_dir = OutputDir(training_args.output_dir, main_process=PartialState().is_main_process)
    out_dir.lock()
    try:
        return _run(script_args, training_args, model_args, vision, out_dir)
    finally:
        out_dir.release()


def _run(
    script_args: ScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    vision: VisionArguments,
    out_dir: OutputDir,
) -> Path:
    """Everything `train` does while holding the output_dir lock."""
    # ---- Data, launch and output_dir checks: every refusal comes before anything is written.
    train_ds, eval_ds, processor, collator, held_out = _setup_data(script_args, training_args, model_args, vision)
    check_process_group(training_args)  # N launched processes that would each train alone
    engine = detect_engine(training_args)
    check_quantization(model_args, engine)  # 8-bit / 4-bit without float storage under ZeRO-3 or FSDP
    check_scored_engine(training_args, vision, engine)
    resume_from = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    # `true` with nothing to resume must not overwrite a finished run: only an actual resume point counts.
    previous = out_dir.check(overwrite=vision.overwrite_output_dir, resuming=resume_from is not None)
    train_ds, eval_ds = prepare_length_grouping(train_ds, eval_ds, collator, training_args)

    # ---- Model.
    model, parts = _setup_model(training_args, model_args, vision, engine)
    report = trainable_parameters(model, parts)
    logger.info("Trainable parameters:\n%s", format_table(report))

    # ---- Train. The Trainer's own push would upload TRL's text-model card and checkpoints: ours runs at the end.
    hub_push = take_over_push(training_args, model_args, vision)
    extras = _trainer_extras(training_args, vision, parts, eval_ds, processor)
    trainer = ScoredSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=processor,
        callbacks=[
            CheckpointManifestCallback(),  # marks each checkpoint complete once every rank has written
            RunMarkerCallback(out_dir),  # after a save, a failure no longer restores the previous results
            FrozenVisionTowerCallback(parts),
            *extras.pop("callbacks"),
        ],
        **extras,
    )
    if not engine.shards_weights:  # FSDP / ZeRO-3 keep the one dtype unify_float_dtype gave every weight
        align_trainable_dtype(trainer.model, training_args)  # after TRL's QLoRA bf16 cast (vlm_sft.modeling.precision)
    # Only now, with every value, the data and the model checked, are the previous results moved aside.
    _replace_previous(training_args, out_dir, previous, resume_from)
    out = Path(training_args.output_dir)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
        # ---- Save, then the model card (PEFT and TRL each write their own README.md on save).
        _save(trainer, processor, collator, report, out)
        if trainer.is_world_process_zero():
            num_eval = len(eval_ds) if eval_ds is not None else None
            kept = kept_step(trainer.state, training_args, vision.early_stopping_patience)
            print(f"kept: step {kept['step']}, {kept['reason']}")
            write_training_card(
                out,
                script_args,
                training_args,
                model_args,
                vision,
                num_train=len(train_ds),
                num_eval=num_eval,
                kept=kept,
            )
            if held_out is not None:
                write_record(held_out, out)  # eval_split.json: `vlm-sft eval` scores exactly these rows
    except BaseException:  # Ctrl-C included: before the first save, the previous results come back
        out_dir.failed()
        raise
    out_dir.succeeded()
    if hub_push is not None and trainer.is_world_process_zero():
        print(f"pushed: {push_after_training(out, hub_push)}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point shared by scripts/sft_vlm.py and `vlm-sft train`: 1 for bad data or state, 2 for a bad recipe."""
    try:
        script_args, training_args, model_args, vision = parse_recipe(argv)
        check_model_path(model_args.model_name_or_path)  # here, not in parse_recipe: recipes parse before a build
    except (ValueError, OSError) as err:  # unknown key, bad value, missing recipe: a usage error, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(training_args)  # INFO on the main process, WARNING on the others
    try:
        train(script_args, training_args, model_args, vision)
    except ResolutionError as err:  # a resolution key the family does not take: the recipe is wrong
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DataError, SampleTooLongError, OutputDirError, CheckpointError, EngineError, ModelUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except PushError as err:  # trained and saved; only the upload failed
        print(f"error: {err}", file=sys.stderr)
        return 1
    except LoraTargetError as err:  # a recipe value checked against the loaded model: still a bad argument
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
