"""Learning rates per part: the projector and the vision tower in their own optimizer groups, and LoRA+.

The projector is trained fully from its pretrained weights while LoRA starts from zero, so the two often
want different step sizes; LoRA+ (Hayou et al., 2024) gives the B matrices `loraplus_lr_ratio` x the rate.
With LoRA+ alone PEFT's `create_loraplus_optimizer` builds the optimizer; with a part rate as well the groups
are built here with the same B-matrix rule (the part groups keep their own rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlm_sft.modeling.setup import Components


@dataclass
class PartLearningRates:
    """Per-part rates; None means the run's `learning_rate`."""

    parts: Components
    learning_rate: float
    weight_decay: float = 0.0
    projector_lr: float | None = None
    vision_tower_lr: float | None = None
    loraplus_lr_ratio: float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.projector_lr, self.vision_tower_lr, self.loraplus_lr_ratio))

    def part_of(self, name: str) -> str:
        """`projector`, `vision_tower`, `lora_B` or `rest` for a parameter name of the (PEFT-wrapped) model."""
        # PEFT prefixes names with base_model.model. and puts copies under modules_to_save.default.
        if any(f"{p}." in name for p in self.parts.projectors):
            return "projector"
        if f"{self.parts.vision_tower}." in name:
            return "vision_tower"
        return "lora_B" if "lora_B" in name else "rest"

    def groups(self, model: Any, decay: set[str]) -> list[dict]:
        """Optimizer param groups (trainable parameters only), each with its `lr`, decay split as the Trainer does."""
        ratio = self.loraplus_lr_ratio or 1.0
        rates = {
            "projector": self.projector_lr or self.learning_rate,
            "vision_tower": self.vision_tower_lr or self.learning_rate,
            "lora_B": self.learning_rate * ratio,
            "rest": self.learning_rate,
        }
        buckets: dict[tuple[str, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                buckets.setdefault((self.part_of(name), name in decay), []).append(param)
        return [
            {"params": params, "lr": rates[part], "weight_decay": self.weight_decay if decayed else 0.0, "part": part}
            for (part, decayed), params in sorted(buckets.items())
        ]

    def build(self, model: Any, optimizer_cls: Any, optimizer_kwargs: dict, decay: set[str]) -> Any:
        """The optimizer: PEFT's LoRA+ optimizer when only `loraplus_lr_ratio` is set, else our groups."""
        kwargs = dict(optimizer_kwargs)
        if self.loraplus_lr_ratio is not None and self.projector_lr is None and self.vision_tower_lr is None:
            from peft.optimizers import create_loraplus_optimizer

            lr = kwargs.pop("lr", self.learning_rate)
            return create_loraplus_optimizer(
                model,
                optimizer_cls,
                lr=lr,
                loraplus_lr_ratio=self.loraplus_lr_ratio,
                loraplus_weight_decay=self.weight_decay,
                **kwargs,
            )
        groups = self.groups(model, decay)
        for group in groups:
            group.pop("part")  # torch optimizers keep unknown keys, but schedulers and checkpoints need not see it
        return optimizer_cls(groups, **kwargs)
