"""`vlm-sft estimate MODEL [--recipe recipes/X.yaml]`: training-memory breakdown, offline.

MODEL is a local folder (or config.json), a Hub id whose config.json is in the local Hugging Face
cache, or a built-in config (vlm_sft/modeling/builtin_configs: llava-1.5-7b, llava-1.5-13b,
llava-v1.6-mistral-7b). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from vlm_sft.modeling.memory import LORA_PRESETS, GiB, ModelShape, estimate, format_report, setup_from_recipe


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hub id (config from the local cache), local folder, or built-in name")
    parser.add_argument("--recipe", type=Path, help="recipe YAML (recipes/*.yaml): quantization, LoRA, batch, ...")
    parser.add_argument("--batch-size", type=int, help="per-device batch size (recipe: per_device_train_batch_size)")
    parser.add_argument(
        "--seq-len", type=int, help="text tokens per sample, image tokens added (when max_length is null: 512)"
    )
    parser.add_argument("--max-length", type=int, help="tokens per sample, text + image (overrides the recipe)")
    parser.add_argument("--images", type=int, help="images per sample (default 1)")
    parser.add_argument("--lora-r", type=int)
    parser.add_argument("--lora-target", choices=tuple(LORA_PRESETS))
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--double-quant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="4-bit double quantization (recipe: use_bnb_nested_quant)",
    )
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--kbit-upcast",
        action=argparse.BooleanOptionalAction,
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


def _load_recipe(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of recipe keys, got {type(data).__name__}.")
    return data


def run(args: argparse.Namespace) -> int:
    try:
        config, source = resolve_config(args.model)
        shape = ModelShape.from_config(config)
        recipe = _load_recipe(args.recipe)
        overrides: dict[str, Any] = {
            "batch_size": args.batch_size,
            "images_per_sample": args.images,
            "lora_r": args.lora_r,
            "lora_target": args.lora_target,
            "dtype": args.dtype,
            "load_in_4bit": args.load_in_4bit,
            "double_quant": args.double_quant,
            "gradient_checkpointing": args.gradient_checkpointing,
            "kbit_fp32_upcast": args.kbit_upcast,
            "device": args.device,
        }
        if args.seq_len is not None:  # text tokens: the sequence is the image tokens plus these
            overrides.update(text_tokens=args.seq_len)
            recipe = {**recipe, "max_length": None}
        if args.max_length is not None:
            recipe = {**recipe, "max_length": args.max_length}
        setup = setup_from_recipe(recipe, **overrides)
        est = estimate(shape, setup)
    except (OSError, ValueError) as err:  # ConfigNotFound, unsupported family, bad recipe value
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        out = {
            "model": args.model,
            "source": source,
            "setup": asdict(setup),
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
    return 0
