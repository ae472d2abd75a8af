"""`vlm-sft estimate MODEL [--recipe recipes/X.yaml]`: training-memory breakdown, offline.

MODEL is a local folder (or config.json), a Hub id whose config.json is in the local Hugging Face
cache, or a built-in config (vlm_sft/modeling/builtin_configs: the model of every recipe in recipes/).
Nothing is downloaded. The recipe is read by `vlm_sft.training.recipe.load_recipe`, the parser training
uses; options are spelled as recipe keys and override it (`--per_device_train_batch_size 2`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path
from typing import Any

from vlm_sft.modeling.memory import (
    LORA_PRESETS,
    GiB,
    ModelShape,
    estimate,
    format_report,
    recipe_values,
    setup_from_recipe,
)
from vlm_sft.modeling.resolution import ImageSettings


class ConfigNotFound(ValueError):
    """No config.json for the model in any place we are allowed to look."""


def builtin_configs() -> dict[str, str]:
    """Accepted names -> built-in file: 'llava-hf/llava-1.5-7b-hf', 'llava-1.5-7b-hf', 'llava-1.5-7b'."""
    names: dict[str, str] = {}
    for entry in resources.files("vlm_sft.modeling.builtin_configs").iterdir():
        if not entry.name.endswith(".json"):
            continue
        repo_id = entry.name[: -len(".json")].replace("--", "/", 1)
        short = repo_id.split("/", 1)[-1]
        for key in (repo_id, short, short.removesuffix("-hf")):
            names[key.lower()] = entry.name
    return names


def _config_from_dict(data: dict[str, Any], source: str) -> Any:
    from transformers import CONFIG_MAPPING

    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ConfigNotFound(f"{source}: model_type {model_type!r} is not a transformers architecture.")
    return CONFIG_MAPPING[model_type].from_dict(data)


def resolve_config(model: str) -> tuple[Any, str]:
    """The transformers config for MODEL and where it came from; never touches the network."""
    path = Path(model).expanduser()
    if path.is_dir() or path.suffix == ".json":
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigNotFound(f"{path} has no config.json.")
        return _config_from_dict(json.loads(file.read_text()), str(file)), f"local {file}"
    if model.count("/") == 1:
        cached = _cached_config(model)
        if cached is not None:
            return _config_from_dict(json.loads(Path(cached).read_text()), cached), f"Hugging Face cache {cached}"
    builtin = builtin_configs().get(model.lower())
    if builtin is not None:
        text = resources.files("vlm_sft.modeling.builtin_configs").joinpath(builtin).read_text()
        return _config_from_dict(json.loads(text), builtin), f"built-in vlm_sft/modeling/builtin_configs/{builtin}"
    known = sorted({n for n in builtin_configs() if "/" in n})
    raise ConfigNotFound(
        f"No config for {model!r}: it is not a folder with config.json, its config.json is not in the local "
        f"Hugging Face cache, and it is not a built-in ({', '.join(known)}). Download the config once "
        f"(`hf download {model} config.json`) or pass the model's folder."
    )


def _cached_config(repo_id: str) -> str | None:
    """config.json from the local Hugging Face cache, or None (local_files_only: no download)."""
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, "config.json", local_files_only=True)
    except Exception:  # not cached, or not a valid repo id: both mean "look elsewhere"
        return None


def _option(parser: argparse.ArgumentParser, key: str, *old: str, **kwargs: Any) -> None:
    """`--key` spelled as the recipe key; older dashed spellings kept as hidden aliases."""
    parser.add_argument(f"--{key}", dest=key, **kwargs)
    for alias in old:
        parser.add_argument(
            alias, dest=key, help=argparse.SUPPRESS, **{k: v for k, v in kwargs.items() if k != "help"}
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hub id (config from the local cache), local folder, or built-in name")
    parser.add_argument("--recipe", type=Path, help="recipe YAML (recipes/*.yaml), read as training reads it")
    flag = argparse.BooleanOptionalAction
    _option(parser, "per_device_train_batch_size", "--batch-size", type=int, help="per-device batch size")
    _option(parser, "text_tokens", "--seq-len", type=int, help="text tokens per sample when max_length is null (512)")
    _option(parser, "max_length", "--max-length", type=int, help="tokens per sample, text + image")
    _option(parser, "images_per_sample", "--images", type=int, help="images per sample (default 1)")
    _option(parser, "lora_r", "--lora-r", type=int)
    _option(parser, "lora_target", "--lora-target", choices=tuple(LORA_PRESETS))
    _option(parser, "dtype", choices=("bfloat16", "float16", "float32"))
    _option(parser, "bf16", action=flag, default=None, help="bf16 autocast (--no-bf16: compute in the weights' dtype)")
    _option(parser, "fp16", action=flag, default=None, help="fp16 autocast")
    _option(parser, "load_in_4bit", "--load-in-4bit", action=flag, default=None)
    _option(parser, "use_bnb_nested_quant", "--double-quant", action=flag, default=None, help="4-bit double quant")
    _option(parser, "activation_checkpointing", "--gradient-checkpointing", action=flag, default=None)
    for key in ("image_min_pixels", "image_max_pixels", "image_longest_edge", "max_image_tokens"):
        _option(parser, key, type=int, help="image resolution (see vlm_sft/modeling/resolution.py)")
    _option(parser, "image_splitting", action=flag, default=None, help="Idefics3/SmolVLM: cut images into tiles")
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="your conversations: image tokens per sample from your own images (p99, max); the estimate uses the max",
    )
    parser.add_argument("--image-dir", type=Path, help="folder --data's image paths are relative to")
    parser.add_argument(
        "--kbit-upcast",
        action=flag,
        default=None,
        help="prepare_model_for_kbit_training's fp32 upcast of the unquantized parts (on, as training does)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: the bookkeeping validated "
        "by benchmarks/measure_memory.py; cuda (default): Triton loss head + CUDA context",
    )
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


# option -> the smallest value that makes sense
_MINIMUM = {
    "per_device_train_batch_size": 1,
    "text_tokens": 1,
    "max_length": 1,
    "images_per_sample": 0,
    "lora_r": 1,
    "image_min_pixels": 1,
    "image_max_pixels": 1,
    "image_longest_edge": 1,
    "max_image_tokens": 1,
}
_RESOLUTION = ("image_min_pixels", "image_max_pixels", "image_longest_edge", "image_splitting", "max_image_tokens")


def _bad_number(args: argparse.Namespace) -> str | None:
    for key, low in _MINIMUM.items():
        value = getattr(args, key)
        if value is not None and value < low:
            return f"--{key} {value}: expected an integer >= {low}."
    return None


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe's values as training parses them (unknown keys refused), or {} without a recipe."""
    if args.recipe is None:
        return {}
    if not args.recipe.is_file():
        raise ValueError(f"recipe {args.recipe} does not exist.")
    from vlm_sft.training.recipe import load_recipe

    return recipe_values(load_recipe(args.recipe))


def _setup_and_shape(args: argparse.Namespace, config: Any) -> tuple[Any, ModelShape, ImageSettings]:
    recipe = _recipe(args)
    keys = ("per_device_train_batch_size", "lora_r", "lora_target", "dtype", "bf16", "fp16", "load_in_4bit")
    for key in (*_RESOLUTION, *keys, "use_bnb_nested_quant", "activation_checkpointing"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    if args.text_tokens is not None:  # text tokens: the sequence is the image tokens plus these
        recipe["max_length"] = None
    if args.max_length is not None:
        recipe["max_length"] = args.max_length
    if args.activation_checkpointing is not None:  # TRL keeps the old name beside the new; the option wins
        recipe["gradient_checkpointing"] = args.activation_checkpointing
    recipe["optim"] = str(getattr(recipe.get("optim"), "value", recipe.get("optim") or "adamw_torch_fused"))
    images = ImageSettings(**{k: recipe.get(k) for k in _RESOLUTION})
    shape = ModelShape.from_config(config, images)
    overrides = {
        "text_tokens": args.text_tokens,
        "images_per_sample": args.images_per_sample,
        "kbit_fp32_upcast": args.kbit_upcast,
        "device": args.device,
    }
    return setup_from_recipe(recipe, **overrides), shape, images


def _data_image_tokens(args: argparse.Namespace, config: Any, settings: ImageSettings) -> dict[str, Any]:
    """Image tokens per sample of --data at the recipe's resolution (arithmetic on each image's size, no processor)."""
    from vlm_sft.data.loading import check_conversations, to_dataset
    from vlm_sft.data.problems import errors
    from vlm_sft.data.stats import percentile
    from vlm_sft.modeling.resolution import image_tokens

    checked = check_conversations(args.data, args.image_dir)
    if errors(checked.problems):
        raise ValueError(f"{args.data} has invalid samples; run `vlm-sft data validate {args.data}` and fix them.")
    lm, tower = [], []
    for images in to_dataset(checked)["images"]:
        counts = [image_tokens(config, settings, image.size) for image in images or []]
        lm.append(sum(c[0] for c in counts))
        tower.append(sum(c[1] for c in counts))
    worst = max(range(len(lm)), key=lm.__getitem__, default=None)
    sample = checked.samples[worst] if worst is not None else None
    name = None if sample is None else sample.sample_id or f"sample {sample.index}"
    return {
        "samples": len(lm),
        "p50": percentile(lm, 50),
        "p99": percentile(lm, 99),
        "max": max(lm, default=0),
        "max_sample": name,
        "vision_tokens_max": tower[worst] if worst is not None else 0,
    }


def run(args: argparse.Namespace) -> int:
    bad = _bad_number(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    data = None
    try:
        config, source = resolve_config(args.model)
        setup, shape, settings = _setup_and_shape(args, config)
        if args.data is not None:
            data = _data_image_tokens(args, config, settings)
            # the sample with the most image tokens, as one "image" of that many tokens
            vision = replace(shape.vision, tokens=data["vision_tokens_max"])
            shape = replace(shape, image_tokens=data["max"], vision=vision)
            setup = replace(setup, images_per_sample=1)
        est = estimate(shape, setup)
    except (OSError, ValueError) as err:  # ConfigNotFound, unsupported family, bad recipe value
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    if args.json:
        out = {
            "model": args.model,
            "source": source,
            "setup": asdict(setup),
            "image_tokens_per_image": shape.image_tokens,
            "data": data,
            "counts": est.counts,
            "static": [asdict(x) for x in est.static],
            "activations": {("on" if k else "off"): [asdict(x) for x in v] for k, v in est.activations.items()},
            "total_gib": {
                "checkpointing_on": est.total_for(True) / GiB,
                "checkpointing_off": est.total_for(False) / GiB,
            },
        }
        print(json.dumps(out, indent=2))
        return 0
    print(format_report(est, args.model, str(args.recipe) if args.recipe else None))
    print(f"config: {source}")
    if data is not None:
        print(
            f"data: {args.data}, {data['samples']} samples; image tokens per sample p50 {data['p50']}, "
            f"p99 {data['p99']}, max {data['max']} ({data['max_sample']}): the estimate uses the max."
        )
    return 0
