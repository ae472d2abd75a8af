"""Our recipe fields that TRL's `ScriptArguments`, `SFTConfig` and `ModelConfig` lack."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlm_sft.modeling.lora import LORA_TARGET_PRESETS


@dataclass
class VisionArguments:
    """Data files and the vision-language policy (what is trained, what is frozen).

    Args:
        train_file: Conversations to train on: LLaVA JSON/JSONL, messages JSON/JSONL or a `save_to_disk` folder.
        eval_file: Held-out conversations in any supported format.
        image_dir: Folder that image paths in the data are relative to (default: the data file's folder).
        data_format: `auto`, `llava` or `messages`.
        eval_fraction: Fraction of `train_file` held out for evaluation when there is no `eval_file` (seeded).
        system_prompt: System message prepended to every conversation.
        lora_target: LoRA preset on the language model (`qv`, `attention`, `all-linear`); TRL's
            `lora_target_modules` takes precedence when set: a name or list of names matches modules by name
            inside the language model (and the vision tower with `lora_on_vision_tower`), any other string is a
            regex over full module paths; no match is refused (`vlm_sft.modeling.setup.user_target_regex`).
        lora_on_vision_tower: Also put LoRA on the vision tower's layers.
        train_projector: Train the multimodal projector fully (saved with the adapter).
        train_vision_tower: Train the vision tower fully (memory hungry; off in every recipe).
        too_long: What to do with a sample longer than `max_length` (text plus image tokens):
            `error` (stop and name it) or `drop` (skip it, log and count). Never truncated.
        train_on: `all_assistant_turns` or `last_assistant_turn`.
        hub_base_model_id: The base model's Hub id for the model card when `model_name_or_path` is a local folder.
        overwrite_output_dir: Replace a previous run's results in `output_dir` (its checkpoint-N folders and
            adapter are deleted first, so none is resumed by mistake). Off: such an `output_dir` is refused.
            (transformers 5 dropped its own `overwrite_output_dir`.)
        max_text_chars: A turn's text longer than this many characters is a data error naming the sample.
        eval_generate: At every evaluation (`eval_strategy`), answer the eval set by greedy generation with the
            current adapter and log `vlm-sft eval`'s scores as `eval_exact_match`, `eval_token_f1`, ... (usable as
            `metric_for_best_model`).
        eval_generate_limit: Score a fixed, seeded subset of this many eval examples (null: all of them).
        eval_generate_max_new_tokens: Generation budget per answer when scoring.
        early_stopping_patience: Stop after this many evaluations without improving `metric_for_best_model`
            (transformers' EarlyStoppingCallback).
        projector_lr: Learning rate of the projector (default: `learning_rate`).
        vision_tower_lr: Learning rate of the vision tower's trained parameters (default: `learning_rate`).
        loraplus_lr_ratio: LoRA+: the B matrices learn this many times faster than `learning_rate` (PEFT's
            `create_loraplus_optimizer`; the paper suggests 16).
        image_min_pixels: Qwen2/2.5/3-VL: the processor's smallest pixel budget per image (its `min_pixels`).
        image_max_pixels: Qwen2/2.5/3-VL: the largest pixel budget per image (`max_pixels`); an image is resized
            into it, so tokens per image <= image_max_pixels / (patch_size x merge_size)^2 (784 for Qwen2.5-VL).
        image_longest_edge: Idefics3 / SmolVLM: the longest edge images are resized to before tiling.
        image_splitting: Idefics3 / SmolVLM: cut images into encoder-sized tiles plus a global view (true) or
            show one tile per image (false: fewest tokens).
        max_image_tokens: Every family: the most language-model tokens one image may become. Qwen-VL without
            image_max_pixels resizes to fit; for other families settings that can exceed it are refused.
        Resolution keys are applied to the processor that training saves with the adapter (eval, infer and merge
        load it); a key the family's processor has no setting for is an error (vlm_sft.modeling.resolution).
    """

    train_file: str | None = field(default=None, metadata={"help": "Training conversations (file or folder)."})
    eval_file: str | None = field(default=None, metadata={"help": "Held-out conversations (file or folder)."})
    image_dir: str | None = field(default=None, metadata={"help": "Folder that image paths are relative to."})
    data_format: str = field(default="auto", metadata={"help": "auto | llava | messages"})
    eval_fraction: float = field(default=0.0, metadata={"help": "Fraction held out when there is no eval_file."})
    system_prompt: str | None = field(default=None, metadata={"help": "System message for every conversation."})
    lora_target: str = field(default="qv", metadata={"help": "qv | attention | all-linear (language model only)"})
    lora_on_vision_tower: bool = field(default=False, metadata={"help": "Also LoRA the vision tower."})
    train_projector: bool = field(default=True, metadata={"help": "Train the projector fully."})
    train_vision_tower: bool = field(default=False, metadata={"help": "Train the vision tower fully."})
    too_long: str = field(default="error", metadata={"help": "error | drop for samples over max_length"})
    train_on: str = field(
        default="all_assistant_turns", metadata={"help": "all_assistant_turns | last_assistant_turn"}
    )
    hub_base_model_id: str | None = field(default=None, metadata={"help": "Base model Hub id for the model card."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a previous run's results in output_dir (else it is refused)."},
    )
    max_text_chars: int = field(default=100_000, metadata={"help": "Refuse turn texts longer than this."})

    eval_generate: bool = field(default=False, metadata={"help": "Score answers by generation at every evaluation."})
    eval_generate_limit: int | None = field(
        default=100, metadata={"help": "Seeded subset of eval examples scored by generation (null: all)."}
    )
    eval_generate_max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per scored answer."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Evaluations without improvement before training stops."}
    )
    projector_lr: float | None = field(default=None, metadata={"help": "Projector learning rate."})
    vision_tower_lr: float | None = field(default=None, metadata={"help": "Vision tower learning rate."})
    loraplus_lr_ratio: float | None = field(default=None, metadata={"help": "LoRA+ ratio of B to A learning rate."})

    image_min_pixels: int | None = field(default=None, metadata={"help": "Qwen-VL: min pixels per image."})
    image_max_pixels: int | None = field(default=None, metadata={"help": "Qwen-VL: max pixels per image."})
    image_longest_edge: int | None = field(default=None, metadata={"help": "Idefics3/SmolVLM: resized longest edge."})
    image_splitting: bool | None = field(default=None, metadata={"help": "Idefics3/SmolVLM: split images into tiles."})
    max_image_tokens: int | None = field(default=None, metadata={"help": "Ceiling on tokens per image (any family)."})

    def __post_init__(self) -> None:
        choices = {
            "data_format": ("auto", "llava", "messages"),
            "lora_target": LORA_TARGET_PRESETS,
            "too_long": ("error", "drop"),
            "train_on": ("all_assistant_turns", "last_assistant_turn"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}.")
        if not isinstance(self.max_text_chars, int) or self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be at least 1, e.g. 100000; got {self.max_text_chars}.")
        for name in ("image_min_pixels", "image_max_pixels", "image_longest_edge", "max_image_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be a positive integer (or null for the processor's own); got {getattr(self, name)}."
                )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), e.g. 0.1; got {self.eval_fraction}.")
        for name in ("eval_generate_limit", "eval_generate_max_new_tokens", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive whole number, e.g. 3; got {value}.")
        for name in ("projector_lr", "vision_tower_lr", "loraplus_lr_ratio"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number, e.g. 1e-4 (or left out); got {value}.")
