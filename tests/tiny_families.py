"""Tiny random-weight models of every supported family, each with its real processor, built locally.

`build_tiny_family("qwen2_vl", folder)` writes a folder that loads with `AutoProcessor.from_pretrained(folder)` and
`AutoModelForImageTextToText.from_pretrained(folder)`: the family's real model and processor classes, its real chat
template (read from the installed `trl` package), a byte-level BPE tokenizer trained locally that holds the
family's special tokens, and toy sizes (hidden 64-128, 2 layers, 32-96 px images, a handful of image tokens) so a
forward and backward pass takes milliseconds. No download anywhere.

Sizing rules that the real checkpoints satisfy and toy configs easily break, checked here:

- image tokens in the text must match the vision features: LLaVA(-NeXT) `(image_size / patch_size)^2` (+ anyres
  tiles), Qwen `grid_h * grid_w / merge_size^2`, Idefics3 / SmolVLM `(image_size / patch_size)^2 / scale_factor^2`
  per tile, Gemma 3 `mm_tokens_per_image` (a square number; the projector average-pools the patch grid down to it),
  PaliGemma `(image_size / patch_size)^2` as the image processor's `image_seq_length`;
- Qwen's multimodal RoPE splits each head's rotary half (`head_dim / 2`) into t/h/w sections: `sum(mrope_section)`
  must equal `head_dim / 2`;
- bitsandbytes' packed 4-bit CPU kernel needs in_features >= 64 and out_features divisible by 32, so every linear
  layer of the language models is a multiple of 64 wide.

Video: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM processors take a video processor, and every transformers video
processor needs torchvision (their `AutoVideoProcessor` is a stub without it, so even constructing or loading the
stock processor fails). The tiny folders therefore use image-only subclasses of the real processors (see
`_ImageOnlyProcessor`), registered by name with `AutoProcessor` when this module is imported. Real users loading the
Hub checkpoints need `torchvision` installed, matching their torch build (for a CPU torch:
`pip install torchvision --index-url https://download.pytorch.org/whl/cpu`).
"""

from __future__ import annotations

import importlib.resources
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin

from vlm_sft.quickstart.tiny_model import build_tiny_llava, build_tokenizer

# Toy sizes shared by the families. Language models: 2 layers, hidden 128, 4 heads of 32, 2 KV heads (k/v out 64).
TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
KV_HEADS = 2
HEAD_DIM = TEXT["hidden_size"] // TEXT["num_attention_heads"]
VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
GAUSS = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # SigLIP-style normalization
QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
IDEFICS3_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),  # the processor looks up a 6 x 6 grid
]


# ----------------------------------------------------------------------------------------------- image-only processors
_SHIM = "processing_vlm_sft"  # module saved next to an image-only processor, see `_ImageOnlyProcessor.save_pretrained`


class _ImageOnlyProcessor:
    """Mixin: the real processor minus its video processor, which cannot exist without torchvision.

    `ProcessorMixin` derives the sub-processors it builds, checks, saves and loads from `get_attributes()`; dropping
    "video_processor" there is all it takes. The parent `__init__` still receives `video_processor=None`, which the
    base class ignores (it zips the arguments with the attributes). Text and image processing are untouched.

    Loading: `AutoProcessor.from_pretrained(folder)` finds the class by name once this module is imported. In a
    process that has not imported it, the saved `auto_map` makes loading fail loudly (asking for
    `trust_remote_code=True`, which then works through a one-line shim that imports this module) instead of
    AutoProcessor silently falling back to a bare tokenizer.
    """

    @classmethod
    def get_attributes(cls) -> list[str]:
        return [name for name in super().get_attributes() if name != "video_processor"]  # type: ignore[misc]

    def __call__(self, *args: Any, videos: Any = None, **kwargs: Any) -> Any:
        # The base class would silently skip videos when there is no video processor: refuse them instead.
        if videos is not None:
            raise ValueError(
                f"{type(self).__name__} processes images and text only; videos need the stock processor "
                "and torchvision."
            )
        return super().__call__(*args, **kwargs)  # type: ignore[misc]

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        self.auto_map = {"AutoProcessor": f"{_SHIM}.{type(self).__name__}"}  # serialized by ProcessorMixin.to_dict
        # The shim goes in first, so that a push_to_hub=True save uploads it too.
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        Path(save_directory, f"{_SHIM}.py").write_text(
            '"""Loads the image-only processor of the vlm-sft tests (needs tests/ on PYTHONPATH)."""\n\n'
            f"from tiny_families import {type(self).__name__}  # noqa: F401\n"
        )
        return super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]


class Qwen2VLImageOnlyProcessor(_ImageOnlyProcessor, transformers.Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images and text only (no torchvision needed)."""


class Qwen2_5_VLImageOnlyProcessor(_ImageOnlyProcessor, transformers.Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images and text only (no torchvision needed)."""


class Qwen3VLImageOnlyProcessor(_ImageOnlyProcessor, transformers.Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images and text only (no torchvision needed)."""


class SmolVLMImageOnlyProcessor(_ImageOnlyProcessor, transformers.SmolVLMProcessor):
    """`SmolVLMProcessor` for images and text only (no torchvision needed)."""

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        video_processor: None = None,
        image_seq_len: int = 169,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        # The parent makes video_processor a required positional argument; loading passes only the two we keep.
        # Loading also passes only the named arguments of __init__, so chat_template must stay named here.
        super().__init__(
            image_processor,
            tokenizer,
            video_processor,
            image_seq_len=image_seq_len,
            chat_template=chat_template,
            **kwargs,
        )

    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any) -> Any:
        # SmolVLMProcessor's override only adds video defaults read from its video processor: use the base method.
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


# `AutoProcessor.from_pretrained` resolves the `processor_class` saved in processor_config.json by name, through the
# registered extras. String keys match no model config, so no stock processor is overridden.
IMAGE_ONLY_PROCESSORS = (
    Qwen2VLImageOnlyProcessor,
    Qwen2_5_VLImageOnlyProcessor,
    Qwen3VLImageOnlyProcessor,
    SmolVLMImageOnlyProcessor,
)
for _cls in IMAGE_ONLY_PROCESSORS:
    AutoProcessor.register(f"vlm_sft.{_cls.__name__}", _cls, exist_ok=True)


# ------------------------------------------------------------------------------------------------------------ helpers
def chat_template(name: str) -> str:
    """The model's own chat template as shipped with the installed trl (trl/chat_templates/NAME.jinja)."""
    return (importlib.resources.files("trl") / "chat_templates" / f"{name}.jinja").read_text()


def _is_complete(out: Path) -> bool:
    return (out / "model.safetensors").exists() and (out / "processor_config.json").exists()


def _save(out: Path, model: PreTrainedModel, processor: ProcessorMixin) -> Path:
    """Save into a sibling folder and rename it, so a crash mid-build never leaves a folder that looks complete."""
    tokenizer = processor.tokenizer
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    # A private staging folder: two processes building the same family (pytest-xdist, parallel make) never collide.
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.", suffix=".partial", dir=out.parent))
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if not _is_complete(out):
        shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:  # another process renamed its build into place first
            if not _is_complete(out):
                raise
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _text(tokenizer: Any, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a toy language-model config, vocabulary and special ids taken from the tokenizer."""
    return {
        **TEXT,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }


def _model(model_cls: type[PreTrainedModel], config: Any, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)  # deterministic weights: a rebuilt folder equals a cached one
    return model_cls(config)


# ----------------------------------------------------------------------------------------------------------- families
def build_tiny_llava_next(out_dir: str | Path) -> Path:
    """LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf): CLIP + anyres tiling + Mistral, [INST] template."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    out = Path(out_dir)
    if _is_complete(out):
        return out
    image_size, patch_size = 32, 8
    # anyres: the image is resized to the best-fitting grid, cut into 32 px tiles, and a 32 px overview is added.
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    tokenizer = build_tokenizer(["<image>"])  # [INST] is plain text in the Mistral tokenizer
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        **GAUSS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=chat_template("llava_next"),
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            **VISION, image_size=image_size, patch_size=patch_size, projection_dim=VISION["hidden_size"]
        ),
        text_config=MistralConfig(**_text(tokenizer, head_dim=HEAD_DIM, sliding_window=None)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return _save(out, _model(LlavaNextForConditionalGeneration, config), processor)


def _qwen_tokenizer() -> Any:
    # Qwen2/2.5/3-VL instruct tokenizers: no BOS, no unk, eos <|im_end|>, pad <|endoftext|>.
    return build_tokenizer(
        QWEN_TOKENS, bos_token=None, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", add_bos=False
    )


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen_image_processor(patch_size: int, mean_std: dict[str, list[float]] | None = None) -> Any:
    from transformers import Qwen2VLImageProcessorPil

    unit = patch_size * 2  # images are resized to multiples of patch_size * merge_size
    # min/max pixels: every image becomes 2x2 .. 3x3 merged patches, i.e. 4 to 9 image tokens.
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": (2 * unit) ** 2, "longest_edge": (3 * unit) ** 2},
        **(mean_std or {}),
    )


# Multimodal RoPE: t/h/w split of each head's rotary half, sum(mrope_section) == HEAD_DIM // 2 (7B: [16, 24, 24]).
QWEN2_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}


def build_tiny_qwen2_vl(out_dir: str | Path) -> Path:
    """Qwen2-VL (Qwen/Qwen2-VL-2B-Instruct): ViT with 2D RoPE + patch merger, Qwen2 with M-RoPE."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLTextConfig, Qwen2VLVisionConfig

    out = Path(out_dir)
    if _is_complete(out):
        return out
    tokenizer = _qwen_tokenizer()
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=_qwen_image_processor(14),
        tokenizer=tokenizer,
        chat_template=chat_template("qwen2_5_vl"),  # Qwen2-VL ships the same template as Qwen2.5-VL
    )
    config = Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(
            depth=2, embed_dim=64, num_heads=4, mlp_ratio=2, hidden_size=TEXT["hidden_size"], patch_size=14
        ),
        text_config=Qwen2VLTextConfig(**_text(tokenizer, rope_parameters=dict(QWEN2_ROPE))),
        **_qwen_ids(tokenizer),
    )
    return _save(out, _model(Qwen2VLForConditionalGeneration, config), processor)


def build_tiny_qwen2_5_vl(out_dir: str | Path) -> Path:
    """Qwen2.5-VL (Qwen/Qwen2.5-VL-3B-Instruct): windowed-attention ViT + merger, Qwen2 with M-RoPE."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
    )

    out = Path(out_dir)
    if _is_complete(out):
        return out
    tokenizer = _qwen_tokenizer()
    processor = Qwen2_5_VLImageOnlyProcessor(
        image_processor=_qwen_image_processor(14), tokenizer=tokenizer, chat_template=chat_template("qwen2_5_vl")
    )
    config = Qwen2_5_VLConfig(
        vision_config=Qwen2_5_VLVisionConfig(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=TEXT["hidden_size"],
            patch_size=14,
            window_size=56,  # 2x2 merged patches per window: layer 0 attends in windows
            fullatt_block_indexes=[1],  # layer 1 attends globally, as every 8th layer of the real ones
        ),
        text_config=Qwen2_5_VLTextConfig(**_text(tokenizer, rope_parameters=dict(QWEN2_ROPE))),
        **_qwen_ids(tokenizer),
    )
    return _save(out, _model(Qwen2_5_VLForConditionalGeneration, config), processor)


def build_tiny_qwen3_vl(out_dir: str | Path) -> Path:
    """Qwen3-VL (Qwen/Qwen3-VL-2B-Instruct): SigLIP-2-style ViT with DeepStack, Qwen3 with interleaved M-RoPE."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLTextConfig, Qwen3VLVisionConfig

    out = Path(out_dir)
    if _is_complete(out):
        return out
    tokenizer = _qwen_tokenizer()
    processor = Qwen3VLImageOnlyProcessor(
        image_processor=_qwen_image_processor(16, GAUSS), tokenizer=tokenizer, chat_template=chat_template("qwen3_vl")
    )
    config = Qwen3VLConfig(
        vision_config=Qwen3VLVisionConfig(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=TEXT["hidden_size"],
            patch_size=16,
            num_position_embeddings=36,  # a learned 6x6 grid, interpolated to each image's patch grid
            deepstack_visual_indexes=[0],  # features of vision layer 0 are added into language layer 0
        ),
        text_config=Qwen3VLTextConfig(
            **_text(
                tokenizer,
                head_dim=HEAD_DIM,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 5e6,
                    "mrope_section": [6, 5, 5],  # interleaved t/h/w; sums to HEAD_DIM // 2 like the real [24, 20, 20]
                    "mrope_interleaved": True,
                },
            )
        ),
        **_qwen_ids(tokenizer),
    )
    return _save(out, _model(Qwen3VLForConditionalGeneration, config), processor)


def _build_idefics3_like(out: Path, *, smol: bool) -> Path:
    """Idefics3 and SmolVLM share the architecture: SigLIP + pixel-shuffle connector + Llama, image splitting."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMVisionConfig,
    )

    image_size, patch_size, scale_factor = 32, 8, 2
    # Pixel shuffle folds scale_factor^2 neighbouring patches into one token: (32 / 8)^2 / 2^2 = 4 tokens per tile.
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    if smol:  # HuggingFaceTB/SmolVLM-Instruct: SmolLM2 tokenizer, no BOS added (the template starts <|im_start|>)
        tokenizer = build_tokenizer(
            ["<|im_end|>", *IDEFICS3_TOKENS],
            bos_token="<|im_start|>",
            eos_token="<end_of_utterance>",
            pad_token="<|im_end|>",
            unk_token="<|endoftext|>",
            add_bos=False,
        )
    else:  # HuggingFaceM4/Idefics3-8B-Llama3: Llama 3 tokenizer, adds <|begin_of_text|>, pad is eos
        tokenizer = build_tokenizer(
            IDEFICS3_TOKENS,
            bos_token="<|begin_of_text|>",
            eos_token="<|end_of_text|>",
            pad_token="<|end_of_text|>",
            unk_token=None,
        )
    # Images are resized to a longest edge of 64 px and split into 32 px tiles (up to 2x2) plus a 32 px overview.
    image_kwargs = {"size": {"longest_edge": 2 * image_size}, "max_image_size": {"longest_edge": image_size}, **GAUSS}
    if smol:
        processor = SmolVLMImageOnlyProcessor(
            image_processor=SmolVLMImageProcessorPil(**image_kwargs),
            tokenizer=tokenizer,
            image_seq_len=image_seq_len,
            chat_template=chat_template("smolvlm"),
        )
    else:
        processor = Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(**image_kwargs),
            tokenizer=tokenizer,
            image_seq_len=image_seq_len,
            chat_template=chat_template("idefics3"),
        )
    vision_cls, config_cls, model_cls = (
        (SmolVLMVisionConfig, SmolVLMConfig, SmolVLMForConditionalGeneration)
        if smol
        else (Idefics3VisionConfig, Idefics3Config, Idefics3ForConditionalGeneration)
    )
    config = config_cls(
        vision_config=vision_cls(**VISION, image_size=image_size, patch_size=patch_size),
        text_config=LlamaConfig(**_text(tokenizer)),
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return _save(out, _model(model_cls, config), processor)


def build_tiny_idefics3(out_dir: str | Path) -> Path:
    """Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3)."""
    out = Path(out_dir)
    return out if _is_complete(out) else _build_idefics3_like(out, smol=False)


def build_tiny_smolvlm(out_dir: str | Path) -> Path:
    """SmolVLM (HuggingFaceTB/SmolVLM-Instruct); its processor needs `num2words`."""
    out = Path(out_dir)
    return out if _is_complete(out) else _build_idefics3_like(out, smol=True)


def _gemma_tokenizer(special_tokens: list[str], named_tokens: dict[str, str] | None = None) -> Any:
    return build_tokenizer(special_tokens, bos_token="<bos>", eos_token="<eos>", named_tokens=named_tokens)


def build_tiny_gemma3(out_dir: str | Path) -> Path:
    """Gemma 3 (google/gemma-3-4b-it): SigLIP + average-pooling projector + Gemma 3 (sliding and global layers)."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    if _is_complete(out):
        return out
    image_size, patch_size = 32, 8
    # The projector average-pools the 4x4 patch grid to sqrt(mm_tokens_per_image) per side: 2x2 = 4 soft tokens
    # (real: 896 / 14 = 64 patches a side pooled to 16, i.e. 256 tokens).
    mm_tokens_per_image = 4
    tokenizer = _gemma_tokenizer(
        ["<start_of_turn>", "<end_of_turn>"],
        # Gemma3Processor reads these names from the tokenizer, as on google/gemma-3-*.
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(
            size={"height": image_size, "width": image_size}, do_pan_and_scan=False, **GAUSS
        ),
        tokenizer=tokenizer,
        image_seq_length=mm_tokens_per_image,
        chat_template=chat_template("gemma3"),
    )
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(
            **VISION, image_size=image_size, patch_size=patch_size, vision_use_head=False
        ),
        text_config=Gemma3TextConfig(
            **_text(
                tokenizer,
                head_dim=HEAD_DIM,
                query_pre_attn_scalar=HEAD_DIM,
                sliding_window=32,
                layer_types=["sliding_attention", "full_attention"],  # real: 5 sliding to 1 global
            )
        ),
        mm_tokens_per_image=mm_tokens_per_image,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    return _save(out, _model(Gemma3ForConditionalGeneration, config), processor)


def build_tiny_paligemma(out_dir: str | Path) -> Path:
    """PaliGemma (google/paligemma-3b-pt-224): SigLIP + linear projector + Gemma; prefix/suffix, no chat template."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    if _is_complete(out):
        return out
    image_size, patch_size = 32, 8
    image_seq_length = (image_size // patch_size) ** 2  # every patch is one image token: 16 (real: 256 at 224 px)
    tokenizer = _gemma_tokenizer([], {"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, **GAUSS)
    image_processor.image_seq_length = image_seq_length  # read by PaliGemmaProcessor, saved with the image processor
    # The processor adds 1,024 <locXXXX> and 128 <segXXX> tokens to the tokenizer: size the vocabulary after it.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text_hidden = TEXT["hidden_size"]
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            **VISION, image_size=image_size, patch_size=patch_size, vision_use_head=False, projection_dim=text_hidden
        ),
        text_config=GemmaConfig(**_text(tokenizer, head_dim=HEAD_DIM)),
        image_token_index=tokenizer.image_token_id,
        projection_dim=text_hidden,
        hidden_size=text_hidden,
        vocab_size=len(tokenizer),
    )
    return _save(out, _model(PaliGemmaForConditionalGeneration, config), processor)


FAMILIES: dict[str, Callable[[Path], Path]] = {
    "llava": build_tiny_llava,
    "llava_next": build_tiny_llava_next,
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "qwen3_vl": build_tiny_qwen3_vl,
    "idefics3": build_tiny_idefics3,
    "smolvlm": build_tiny_smolvlm,
    "gemma3": build_tiny_gemma3,
    "paligemma": build_tiny_paligemma,
}


def build_tiny_family(name: str, out_dir: str | Path) -> Path:
    """Build (or reuse, when complete) the tiny model and processor of family `name` in the folder `out_dir`."""
    if name not in FAMILIES:
        raise ValueError(f"Unknown family {name!r}: expected one of {', '.join(FAMILIES)}.")
    return FAMILIES[name](Path(out_dir))
