"""Our recipe fields that TRL's `ScriptArguments`, `SFTConfig` and `ModelConfig` lack."""

from __future__ import annotations

from dataclasses import dataclass, field

LORA_TARGET_PRESETS = ("qv", "attention", "all-linear")


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
            `lora_target_modules` (names or a regex) takes precedence when set.
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
        for name in ("image_min_pixels", "image_max_pixels", "image_longest_edge", "max_image_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be a positive integer (or null for the processor's own); got {getattr(self, name)}."
                )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), e.g. 0.1; got {self.eval_fraction}.")
