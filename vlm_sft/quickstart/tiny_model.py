"""Tiny models, tokenizers and processors built locally from config classes (no download).

They power the offline quickstart and the tests: real architectures, random weights, real
processing code paths. Everything is deterministic, so a built folder can be cached on disk.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlm_sft.rendering import LLAVA_15_CHAT_TEMPLATE

# The tiny model gets llava-1.5's real chat template (vlm_sft.rendering holds it, with the training variant).

# Text the byte-level BPE is trained on: enough English for conversations about images.
_CORPUS = """
USER: ASSISTANT: SYSTEM: What digit is this? The digit is zero one two three four five six
seven eight nine 0 1 2 3 4 5 6 7 8 9 10 11 12 How many objects are on the workbench?
I can see a Phillips screwdriver, wire strippers, and a multimeter on the workbench.
Is the soldering iron turned on? Yes, the LED indicator on the soldering station is green.
No, it is off. Describe the image. What color is it? red green blue yellow black white
There are tools and parts: screws, nuts, bolts, a gauge, a robot arm, a gripper, a cable.
{"count": 3, "objects": ["screw", "nut"], "state": "on"} The answer is yes no maybe.
You are a helpful assistant. Please answer the question about the picture in one word.
"""


def build_tokenizer(
    special_tokens: list[str] | None = None,
    *,
    vocab_size: int = 512,
    bos_token: str | None = "<s>",
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
    unk_token: str | None = "<unk>",
    add_bos: bool = True,
    extra_corpus: str = "",
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (any text encodes, offsets are exact) trained locally.

    `bos_token` / `unk_token` may be None (Qwen's tokenizer has neither). `named_tokens` sets named special-token
    attributes that processors read, e.g. {"image_token": "<image_soft_token>"} gives `tokenizer.image_token` and
    `tokenizer.image_token_id`; their values are added as special tokens too.
    """
    specials = [unk_token, bos_token, eos_token, pad_token, *(special_tokens or []), *(named_tokens or {}).values()]
    specials = list(dict.fromkeys(t for t in specials if t))
    tok = Tokenizer(models.BPE(unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS, extra_corpus], trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        extra_special_tokens=[t for t in specials if t not in {unk_token, bos_token, eos_token, pad_token}],
        **(named_tokens or {}),
    )


def build_tiny_llava(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 64,
    text_hidden: int = 128,
    text_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Build a LLaVA-1.5-architecture model (CLIP vision + Llama text) and its processor in out_dir.

    Same classes, processor and chat template as llava-hf/llava-1.5-7b-hf, at toy size. Idempotent:
    a folder that already holds a complete build is reused.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and (out / "processor_config.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    tokenizer = build_tokenizer(["<image>"])
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_15_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=vision_hidden,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=text_hidden * 2,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            # A trained LM has peaked output distributions; at 0.02 a toy one stays near-uniform
            # (loss stuck near ln(vocab)) even when its argmax is right.
            initializer_range=0.1,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # a crash mid-build never leaves a folder that looks complete
    return out
