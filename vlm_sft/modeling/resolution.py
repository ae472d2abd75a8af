"""Image resolution per family: which recipe keys a family takes, image tokens per image, and the processor setting.

A 12-megapixel phone photo is 16,384 language-model tokens for Qwen2.5-VL at its processor's default pixel budget;
these keys bound that once, in the recipe, and `apply_to_processor` writes them into the processor that training
saves to output_dir (so `vlm-sft eval`, `infer` and `merge`, which load the saved processor, see the same images).

Keys (recipe keys, `vlm_sft.training.config.VisionArguments`):
- `image_min_pixels` / `image_max_pixels` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): the processor's pixel budget; each
  image is resized (aspect kept) into it, so tokens = pixels / (patch_size x merge_size)^2.
- `image_longest_edge` / `image_splitting` (Idefics3, SmolVLM): the resized longest edge and whether the image is
  cut into tiles of the vision encoder's size (plus one global view) or seen as one tile.
- `max_image_tokens` (every family): a ceiling. For Qwen-VL without `image_max_pixels` it sets the pixel budget
  (a documented resize); elsewhere the settings' largest image must fit under it or the recipe is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

QWEN_VL = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
IDEFICS = ("idefics3", "smolvlm")
FIXED = ("llava", "llava_next", "gemma3", "paligemma")
SUPPORTED_KEYS: dict[str, tuple[str, ...]] = {
    **{f: ("image_min_pixels", "image_max_pixels", "max_image_tokens") for f in QWEN_VL},
    **{f: ("image_longest_edge", "image_splitting", "max_image_tokens") for f in IDEFICS},
    **{f: ("max_image_tokens",) for f in FIXED},
}
# The released checkpoints' preprocessor_config.json values, used when no processor is at hand (the estimator).
PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"image_min_pixels": 56 * 56, "image_max_pixels": 28 * 28 * 16384},
    "qwen2_5_vl": {"image_min_pixels": 56 * 56, "image_max_pixels": 28 * 28 * 16384},
    "qwen3_vl": {"image_min_pixels": 65536, "image_max_pixels": 16777216},
    "idefics3": {"image_longest_edge": 4 * 364, "image_splitting": True},
    "smolvlm": {"image_longest_edge": 4 * 384, "image_splitting": True},
}


class ResolutionError(ValueError):
    """A resolution key the family does not take, or settings over the token ceiling: a bad recipe (exit 2)."""


@dataclass(frozen=True)
class ImageSettings:
    """The resolution keys of a recipe (None: the processor's own value)."""

    image_min_pixels: int | None = None
    image_max_pixels: int | None = None
    image_longest_edge: int | None = None
    image_splitting: bool | None = None
    max_image_tokens: int | None = None

    @classmethod
    def from_args(cls, args: Any) -> ImageSettings:
        """From VisionArguments (or anything with these attributes)."""
        return cls(**{f.name: getattr(args, f.name, None) for f in fields(cls)})

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def check_supported(model_type: str, settings: ImageSettings) -> None:
    """Refuse a resolution key the family's processor has no setting for, naming key and family."""
    allowed = SUPPORTED_KEYS.get(model_type)
    if allowed is None:
        return  # an unknown family is refused by vlm_sft.modeling.setup.components_for
    for key in settings.given():
        if key not in allowed:
            raise ResolutionError(
                f"{key} is not supported by the {model_type} family (its processor has no such setting); "
                f"it takes: {', '.join(allowed)}. Remove {key} from the recipe."
            )


def _factor(config: Any) -> int:
    """Qwen-VL: pixels per side of one language-model token (patch_size x spatial_merge_size)."""
    vc = config.vision_config
    return vc.patch_size * vc.spatial_merge_size


def effective(config: Any, settings: ImageSettings) -> ImageSettings:
    """The settings with the processor defaults filled in and, for Qwen-VL, the token ceiling as a pixel budget."""
    model_type = config.model_type
    check_supported(model_type, settings)
    values = {**PROCESSOR_DEFAULTS.get(model_type, {}), **settings.given()}
    if model_type in QWEN_VL and settings.max_image_tokens and settings.image_max_pixels is None:
        values["image_max_pixels"] = settings.max_image_tokens * _factor(config) ** 2  # the documented resize
    return replace(ImageSettings(), **values)


def image_tokens(config: Any, settings: ImageSettings, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(language-model tokens, vision-encoder tokens) for one image of `size` (width, height), or the settings'
    largest image when `size` is None."""
    s = effective(config, settings)
    model_type = config.model_type
    vc = config.vision_config
    if model_type in QWEN_VL:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision needed

        f = _factor(config)
        if size is None:
            side = math.isqrt(s.image_max_pixels) // f * f  # a square at the budget
            width = height = max(side, f)
        else:
            height, width = smart_resize(size[1], size[0], f, s.image_min_pixels, s.image_max_pixels)
        patches = (height // vc.patch_size) * (width // vc.patch_size)
        return patches // vc.spatial_merge_size**2, patches
    if model_type in IDEFICS:
        tile = vc.image_size
        per_tile = (tile // vc.patch_size) ** 2 // config.scale_factor**2
        tiles = 1
        if s.image_splitting:
            w, h = size or (s.image_longest_edge, s.image_longest_edge)
            scale = s.image_longest_edge / max(w, h)
            w, h = max(1, round(w * scale)), max(1, round(h * scale))
            grid = math.ceil(w / tile) * math.ceil(h / tile)
            tiles = grid + 1 if grid > 1 else 1  # the tiles plus one global view
        return tiles * per_tile, tiles * (tile // vc.patch_size) ** 2
    if model_type == "gemma3":
        return config.mm_tokens_per_image, (vc.image_size // vc.patch_size) ** 2
    if model_type in ("llava", "llava_next", "paligemma"):
        grid = vc.image_size // vc.patch_size
        tower = grid * grid + (1 if vc.model_type == "clip_vision_model" else 0)
        full = getattr(config, "vision_feature_select_strategy", "default") == "full"
        base = grid * grid + (1 if full else 0)
        if model_type == "llava_next":
            best = max(config.image_grid_pinpoints, key=lambda hw: hw[0] * hw[1])
            rows, cols = best[0] // vc.image_size * grid, best[1] // vc.image_size * grid
            tiles = (best[0] // vc.image_size) * (best[1] // vc.image_size)
            return base + rows * cols + rows, tower * (tiles + 1)
        return base, tower
    raise ValueError(f"No image-token rule for the {model_type!r} family.")


def check_ceiling(config: Any, settings: ImageSettings) -> None:
    """Refuse settings whose largest image exceeds `max_image_tokens`, naming the family and what to lower."""
    if not settings.max_image_tokens:
        return
    tokens = image_tokens(config, settings)[0]
    if tokens <= settings.max_image_tokens:
        return
    model_type = config.model_type
    fix = {
        **dict.fromkeys(QWEN_VL, "lower image_max_pixels"),
        **dict.fromkeys(IDEFICS, "lower image_longest_edge or set image_splitting: false"),
    }.get(model_type, f"the {model_type} family's token count per image is fixed: raise max_image_tokens")
    raise ResolutionError(
        f"max_image_tokens={settings.max_image_tokens}: the {model_type} family gives up to {tokens} tokens per "
        f"image with these settings; {fix}."
    )


def apply_to_processor(processor: Any, model_type: str, settings: ImageSettings, config: Any | None = None) -> None:
    """Write the resolution keys into the processor in place (save_pretrained then keeps them)."""
    check_supported(model_type, settings)
    given = settings.given()
    image_processor = getattr(processor, "image_processor", processor)
    if model_type in QWEN_VL:
        lo, hi = given.get("image_min_pixels"), given.get("image_max_pixels")
        if hi is None and given.get("max_image_tokens") and config is not None:
            hi = given["max_image_tokens"] * _factor(config) ** 2
        size = dict(getattr(image_processor, "size", None) or {})
        if lo is not None:
            size["shortest_edge"] = lo
            image_processor.min_pixels = lo
        if hi is not None:
            size["longest_edge"] = hi
            image_processor.max_pixels = hi
        image_processor.size = size
    elif model_type in IDEFICS:
        if "image_longest_edge" in given:
            image_processor.size = {"longest_edge": given["image_longest_edge"]}
        if "image_splitting" in given:
            image_processor.do_image_splitting = given["image_splitting"]


def configure_processor(processor: Any, config: Any, settings: ImageSettings) -> None:
    """Check the recipe's resolution keys against the family and the token ceiling, then set them on the processor."""
    check_supported(config.model_type, settings)
    check_ceiling(config, settings)
    apply_to_processor(processor, config.model_type, settings, config)
