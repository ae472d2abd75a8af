"""Model cards for adapters and merged models: metadata the Hub accepts, and a body that says what was trained.

PEFT's `save_pretrained` and TRL's trainer each write a text-model README.md into the output directory
(`library_name: transformers` or a local `base_model` path, a text-generation quick start, no LoRA details).
Ours replaces it after saving and again on push. Its inputs are files in the output directory, so a card
can be rebuilt from the folder alone:

    training_summary.json       written at the end of training (recipe values the folder does not hold)
    adapter_config.json         r, alpha, dropout, targets, modules_to_save (PEFT)
    trainable_parameters.json   trainable / total per component (vlm_sft/modeling/parameters.py)
    trainer_state.json          the training log: final losses
    eval_report.json, loss.png  when present
"""

from __future__ import annotations

import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from vlm_sft.modeling.parameters import adapter_size_mb

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
TAGS = ["peft", "trl", "sft", "vision-language", "image-text-to-text", "vlm-sft"]
_VERSIONS = ("vlm-sft", "transformers", "peft", "trl", "torch", "accelerate", "datasets", "huggingface_hub")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt", ".zip")
DEFAULT_PROMPT = "Describe this image."


class BaseModelIdError(ValueError):
    """The card needs the base model's Hub id and only a local path is known."""


def is_hub_id(value: str | None) -> bool:
    """True for `name` or `namespace/name` that is not a local path (the Hub rejects paths in `base_model`)."""
    if not value or value.startswith((".", "/", "~")) or os.path.exists(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def is_hub_dataset_id(value: str | None) -> bool:
    """A Hub dataset id, not a data file such as `data/train.json` (which is also a syntactically valid id)."""
    return is_hub_id(value) and not str(value).lower().endswith(_DATA_SUFFIXES)


def framework_versions(quantized: bool = False) -> dict[str, str]:
    """Installed versions of the libraries a run depends on."""
    names = _VERSIONS + (("bitsandbytes",) if quantized else ())
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    """Enum -> its value, so TrainingArguments fields serialize to JSON."""
    return getattr(value, "value", value)


def training_summary(
    script_args: Any,
    training_args: Any,
    model_args: Any,
    vision: Any,
    *,
    num_train: int | None = None,
    num_eval: int | None = None,
) -> dict:
    """What the card needs from the recipe and is not in the output directory. Never holds a token."""
    quantized = bool(model_args.load_in_4bit or model_args.load_in_8bit)
    quantization = None
    if quantized:
        quantization = {
            "bits": 4 if model_args.load_in_4bit else 8,
            "quant_type": model_args.bnb_4bit_quant_type if model_args.load_in_4bit else "int8",
            "double_quant": bool(model_args.use_bnb_nested_quant),
            "compute_dtype": model_args.dtype,
            "kept_in_16bit": ["vision tower", "projector", "lm_head"],
        }
    world = int(getattr(training_args, "world_size", 1) or 1)
    hyper = {
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": _plain(training_args.lr_scheduler_type),
        "warmup_steps": training_args.warmup_steps,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "num_processes": world,
        "effective_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world,
        "optim": _plain(training_args.optim),
        "weight_decay": training_args.weight_decay,
        "max_grad_norm": training_args.max_grad_norm,
        "max_length": training_args.max_length,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else str(model_args.dtype),
        "activation_checkpointing": bool(getattr(training_args, "activation_checkpointing", False)),
        "seed": training_args.seed,
        "train_on": vision.train_on,
        "too_long": vision.too_long,
    }
    data_refs = [getattr(script_args, "dataset_name", None), vision.train_file, vision.eval_file]
    return {
        "base_model_name_or_path": model_args.model_name_or_path,
        "base_model_revision": model_args.model_revision,
        "hub_base_model_id": vision.hub_base_model_id,
        "datasets": list(dict.fromkeys(d for d in data_refs if is_hub_dataset_id(d))),
        # Only the file name of local data: full paths say things about the machine, not the model.
        "train_data": Path(vision.train_file).name if vision.train_file else None,
        "num_train_samples": num_train,
        "num_eval_samples": num_eval,
        "system_prompt": vision.system_prompt,
        "lora": {
            "preset": None if model_args.lora_target_modules else vision.lora_target,
            "target_modules_override": model_args.lora_target_modules,
            "on_vision_tower": vision.lora_on_vision_tower,
            "train_projector": vision.train_projector,
            "train_vision_tower": vision.train_vision_tower,
            "use_dora": bool(getattr(model_args, "use_dora", False)),
        },
        "quantization": quantization,
        "hyperparameters": hyper,
        "framework_versions": framework_versions(quantized),
    }


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _base_license(base: str | None, base_path: str | None) -> str | None:
    """The base model's license from its card: a local folder, or the HF cache (no network)."""
    candidates = []
    if base_path and Path(base_path, "README.md").is_file():
        candidates.append(Path(base_path, "README.md"))
    if base and is_hub_id(base):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "README.md")
        if isinstance(cached, str):
            candidates.append(Path(cached))
    for path in candidates:
        try:
            license_ = ModelCard.load(path, ignore_metadata_errors=True).data.license
        except Exception:  # a malformed base card must not break ours
            continue
        if license_:
            return license_
    return None


def resolve_base_model(
    adapter_config: dict | None, summary: dict | None, base_model: str | None = None, *, required: bool
) -> str | None:
    """The base model's Hub id: explicit, the recipe's `hub_base_model_id`, or the Hub id it was loaded by."""
    summary = summary or {}
    candidates = [
        base_model,
        summary.get("hub_base_model_id"),
        summary.get("base_model_name_or_path"),
        (adapter_config or {}).get("base_model_name_or_path"),
    ]
    for candidate in candidates:
        if is_hub_id(candidate):
            return candidate
    if base_model:
        raise BaseModelIdError(f"--base-model-id {base_model!r} is not a Hub model id (namespace/name).")
    local = next((c for c in candidates if c), None)
    message = (
        f"The model card's base_model must be the base model's Hub id (the Hub rejects a local path), but only the "
        f"local path {local!r} is known. Set `hub_base_model_id: <namespace/name>` in the recipe (e.g. "
        "llava-hf/llava-1.5-7b-hf), or pass --base-model-id to `vlm-sft push`."
    )
    if required:
        raise BaseModelIdError(message)
    logger.info("%s The card is written without base_model for now.", message)  # a push would refuse it
    return None


def _losses(state: dict | None) -> dict[str, Any]:
    """Final training loss (last logged), mean training loss, final eval loss, steps, epochs, runtime."""
    if not state:
        return {}
    history = state.get("log_history", [])
    out: dict[str, Any] = {"global_step": state.get("global_step"), "epoch": state.get("epoch")}
    for key, name in (("loss", "final_train_loss"), ("eval_loss", "final_eval_loss")):
        entry = next((e for e in reversed(history) if key in e), None)
        if entry is not None:
            out[name] = entry[key]
            out[name + "_step"] = entry.get("step")
    for key in ("train_loss", "train_runtime"):
        entry = next((e for e in reversed(history) if key in e), None)
        if entry is not None:
            out[key] = entry[key]
    return out


def _fmt(value: Any) -> str:
    """A markdown table cell: short floats, code-quoted lists, and `|` escaped (LoRA target regexes hold some)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(f"`{v}`" for v in value)
    else:
        text = "" if value is None else str(value)
    return text.replace("|", "\\|")


def _flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as `a.b.c` keys; list items named by their "name" (per-example lists are skipped)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flatten_numbers(value, f"{prefix}{key}."))
    elif isinstance(obj, list) and all(isinstance(v, dict) and "name" in v for v in obj):
        for item in obj:
            out.update(_flatten_numbers({k: v for k, v in item.items() if k != "name"}, f"{prefix}{item['name']}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = obj
    return out


def _eval_section(report: dict, max_rows: int = 40) -> list[str]:
    """The eval report's side-by-side table (vlm_sft.evaluation.generate), or its numbers when it has another shape."""
    head = []
    if isinstance(report.get("n"), int):
        eval_file = Path(str(report.get("eval_file") or "")).name
        head = [f"Generated answers on {report['n']} held-out examples{f' (`{eval_file}`)' if eval_file else ''}:", ""]
    try:
        from vlm_sft.evaluation.generate import format_table

        return [*head, format_table(report)]
    except Exception:  # a report from another tool or version: show its numbers rather than fail the card
        pass
    numbers = {k: v for k, v in _flatten_numbers(report).items() if not k.startswith(("examples", "worst"))}
    if not numbers:
        return ["See `eval_report.json`."]
    lines = [*head, "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in list(numbers.items())[:max_rows]]
    if len(numbers) > max_rows:
        lines.append(f"\n{len(numbers) - max_rows} more values in `eval_report.json`.")
    return lines


def usage_snippet(base: str, model_ref: str, *, merged: bool = False, system_prompt: str | None = None) -> str:
    """Python that loads the model (base + adapter, or merged) and its processor, and asks about an image."""
    messages = []
    if system_prompt:  # json.dumps: a valid Python string literal, in double quotes like the rest
        messages.append(
            f'    {{"role": "system", "content": [{{"type": "text", "text": {json.dumps(system_prompt)}}}]}},'
        )
    messages += [
        '    {"role": "user", "content": [',
        '        {"type": "image", "url": "photo.jpg"},',
        f'        {{"type": "text", "text": {json.dumps(DEFAULT_PROMPT)}}},',
        "    ]},",
    ]
    if merged:
        load = [
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'model = AutoModelForImageTextToText.from_pretrained("{model_ref}", dtype="auto", device_map="auto")',
            f'processor = AutoProcessor.from_pretrained("{model_ref}")',
        ]
    else:
        load = [
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'base = AutoModelForImageTextToText.from_pretrained("{base}", dtype="auto", device_map="auto")',
            f'model = PeftModel.from_pretrained(base, "{model_ref}")',
            f'processor = AutoProcessor.from_pretrained("{model_ref}")  # processor and chat template of the run',
        ]
    return "\n".join(
        [
            *load,
            "",
            "messages = [",
            *messages,
            "]",
            "inputs = processor.apply_chat_template(",
            '    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"',
            ").to(model.device)",
            "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)",
            'print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        ]
    )


def _lora_lines(adapter_config: dict, summary: dict, params: dict | None) -> list[str]:
    lora = summary.get("lora") or {}
    targets = adapter_config.get("target_modules")
    target_text = f"`{targets}`" if isinstance(targets, str) else _fmt(sorted(targets or []))
    comps = (params or {}).get("components", {})
    names = sorted((params or {}).get("lora_targets", {}))
    vision = comps.get("vision_tower", {})
    projector = comps.get("projector", {})
    if lora.get("on_vision_tower") or lora.get("train_vision_tower"):
        vision_text = "LoRA" if lora.get("on_vision_tower") else "trained fully"
    elif vision:
        vision_text = "frozen" if not vision.get("trainable") else f"{vision['percent']}% trainable"
    else:
        vision_text = "frozen" if lora else "see adapter_config.json"
    if projector:
        projector_text = (
            f"trained fully ({projector['trainable']:,} parameters)"
            if projector.get("percent") == 100.0
            else ("frozen" if not projector.get("trainable") else f"{projector['percent']}% trainable")
        )
    else:
        projector_text = "trained fully" if adapter_config.get("modules_to_save") else "frozen"
    scope = "language model only" if not lora.get("on_vision_tower") else "language model and vision tower"
    if lora.get("preset"):
        scope += f" (`lora_target: {lora['preset']}`)"
    rows = [
        ("r", adapter_config.get("r")),
        ("lora_alpha", adapter_config.get("lora_alpha")),
        ("lora_dropout", adapter_config.get("lora_dropout")),
        ("target modules", target_text),
        ("LoRA layers", _fmt(names) if names else None),
        ("scope", scope),
        ("vision tower", vision_text),
        ("projector", projector_text),
        ("modules saved in full", _fmt(adapter_config.get("modules_to_save"))),
        ("DoRA / rsLoRA", f"{bool(adapter_config.get('use_dora'))} / {bool(adapter_config.get('use_rslora'))}"),
    ]
    return ["| setting | value |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows if v not in (None, ""))]


def _quantization_line(summary: dict) -> str:
    quant = summary.get("quantization")
    if not summary:
        return "Not recorded (no `training_summary.json` in the run's folder)."
    if not quant:
        precision = summary.get("hyperparameters", {}).get("precision")
        return f"None (LoRA): the frozen base model was loaded in {precision}."
    kept = ", ".join(quant.get("kept_in_16bit", []))
    return (
        f"QLoRA: base model loaded in {quant['bits']}-bit ({quant['quant_type']}, double quantization "
        f"{'on' if quant.get('double_quant') else 'off'}, compute dtype {quant.get('compute_dtype')}); {kept} kept in "
        "16-bit. Merge this adapter into a 16-bit base (`vlm-sft merge`), never into a 4-bit one."
    )


def _params_lines(params: dict | None, size_mb: float) -> list[str]:
    if not params:
        return [f"Adapter size: {size_mb:.2f} MB."]
    lines = ["| component | trainable | total | % |", "|---|---:|---:|---:|"]
    for name, row in params["components"].items():
        lines.append(f"| {name} | {row['trainable']:,} | {row['total']:,} | {row['percent']:.3f} |")
    lines.append(f"| **all** | **{params['trainable']:,}** | **{params['total']:,}** | **{params['percent']:.3f}** |")
    lines.append(f"\nTrainable: {params['percent']:.3f}% of the model's parameters. Adapter size: {size_mb:.2f} MB.")
    return lines


def _loss_lines(losses: dict) -> list[str]:
    rows = [
        ("steps", losses.get("global_step")),
        ("epochs", losses.get("epoch")),
        (f"final training loss (step {losses.get('final_train_loss_step')})", losses.get("final_train_loss")),
        ("mean training loss over the run", losses.get("train_loss")),
        (f"final eval loss (step {losses.get('final_eval_loss_step')})", losses.get("final_eval_loss")),
        ("training time (s)", losses.get("train_runtime")),
    ]
    rows = [(k, v) for k, v in rows if v is not None]
    if not rows:
        return ["No training log (`trainer_state.json`) in the run's folder."]
    return ["| | |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows)]


def _metadata(
    *,
    base: str | None,
    relation: str,
    library: str,
    license_: str | None,
    datasets: list[str],
    tags: list[str],
) -> ModelCardData:
    extra = {"base_model_relation": relation} if base else {}
    return ModelCardData(
        base_model=base,
        library_name=library,
        pipeline_tag="image-text-to-text",
        license=license_,
        datasets=datasets or None,
        tags=tags,
        **extra,
    )


def _load_inputs(output_dir: Path) -> tuple[dict, dict, dict | None, dict | None]:
    adapter_config = _read_json(output_dir / "adapter_config.json")
    if adapter_config is None:
        raise FileNotFoundError(f"No adapter_config.json in {output_dir}: is it the output_dir of a LoRA run?")
    summary = _read_json(output_dir / SUMMARY_FILE) or {}
    params = _read_json(output_dir / "trainable_parameters.json")
    state = _read_json(output_dir / "trainer_state.json")
    return adapter_config, summary, params, state


def build_adapter_card(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    description: str | None = None,
    require_hub_base: bool = True,
) -> ModelCard:
    """The adapter's card from the files in `output_dir`; `repo_id` is what the usage snippet loads."""
    out = Path(output_dir)
    adapter_config, summary, params, state = _load_inputs(out)
    base = resolve_base_model(adapter_config, summary, base_model, required=require_hub_base)
    base_path = summary.get("base_model_name_or_path") or adapter_config.get("base_model_name_or_path")
    license_ = license or summary.get("license") or _base_license(base, base_path)
    bad = [d for d in datasets or [] if not is_hub_dataset_id(d)]
    if bad:
        raise ValueError(f"datasets must be Hub dataset ids (namespace/name), not local files: {bad}")
    datasets = list(datasets or summary.get("datasets") or [])
    quantized = bool(summary.get("quantization"))
    tags = ["qlora" if quantized else "lora", *TAGS]
    if adapter_config.get("use_dora"):
        tags.append("dora")
    data = _metadata(base=base, relation="adapter", library="peft", license_=license_, datasets=datasets, tags=tags)
    model_ref = repo_id or str(out)
    title = (repo_id or out.name).split("/")[-1]
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{base_path}`"
    data_text = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets)
    if not data_text and summary.get("train_data"):
        data_text = f"`{summary['train_data']}`"
    n = summary.get("num_train_samples")
    trained_on = f"Trained on {data_text}" if data_text else "Trained"
    if n:
        trained_on += f" ({n:,} conversations)"
    what = description or (
        f"A {'QLoRA' if quantized else 'LoRA'} adapter that fine-tunes the vision-language model {base_text} "
        f"to answer questions about images. {trained_on} by supervised fine-tuning on the assistant replies "
        "(TRL's SFTTrainer, via vlm-sft)."
    )
    system_prompt = summary.get("system_prompt")
    hyper = summary.get("hyperparameters") or {}
    losses = _losses(state)
    versions = summary.get("framework_versions")
    versions_title = "Framework versions" if versions else "Framework versions (where this card was written)"
    versions = versions or framework_versions(quantized)
    body = [
        f"# {title}",
        "",
        what,
        "",
        "## Use it",
        "",
        "```python",
        usage_snippet(base or str(base_path), model_ref, system_prompt=system_prompt),
        "```",
        "",
        "From the command line (a Hub id or a local folder, `--revision` for a branch, works offline from the "
        "HF cache with `HF_HUB_OFFLINE=1`):",
        "",
        "```bash",
        f'vlm-sft infer --adapter {model_ref} --image photo.jpg --prompt "{DEFAULT_PROMPT}"',
        f"vlm-sft merge --adapter {model_ref} --out merged/  # a standalone 16-bit model",
        "```",
    ]
    if system_prompt:
        body += ["", f"Trained with the system prompt {system_prompt!r}: keep it at inference."]
    body += chat_template_lines(out)
    body += ["", "## LoRA", "", *_lora_lines(adapter_config, summary, params)]
    body += ["", "## Quantization", "", _quantization_line(summary)]
    body += ["", "## Training hyperparameters", ""]
    if hyper:
        body += ["| hyperparameter | value |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in hyper.items())]
        if hyper.get("num_processes"):
            per_device, accumulation = hyper["per_device_train_batch_size"], hyper["gradient_accumulation_steps"]
            body.append(
                f"\nBatch: {per_device} per device x {accumulation} accumulation x {hyper['num_processes']} "
                f"processes = {hyper['effective_batch_size']} samples per step."
            )
    else:
        body.append("Not recorded (no `training_summary.json` in the run's folder).")
    body += ["", "## Trainable parameters", "", *_params_lines(params, adapter_size_mb(out))]
    body += ["", "## Results", "", *_loss_lines(losses)]
    if (out / "loss.png").is_file():
        body += ["", "![Training loss](loss.png)"]
    report = _read_json(out / "eval_report.json")
    if report is not None:
        body += ["", "### Evaluation", "", *_eval_section(report)]
        if (out / "eval_report.md").is_file():
            body.append("\nFull report: [eval_report.md](eval_report.md).")
    body += ["", f"## {versions_title}", "", *(f"- {k}: {v}" for k, v in versions.items())]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def build_merged_card(
    adapter_dir: str | Path,
    *,
    adapter_ref: str,
    revision: str | None,
    base_model: str | None,
    dtype: str,
    out_ref: str,
    template_dir: str | Path | None = None,
) -> ModelCard:
    """The card of a model merged from an adapter: `base_model_relation: merge`, transformers usage, LoRA settings.

    `template_dir`: where the merged processor was saved (its chat template is described; default: the adapter's).
    """
    adapter_config, summary, params, _ = _load_inputs(Path(adapter_dir))
    base = resolve_base_model(adapter_config, summary, base_model, required=False)
    base_path = summary.get("base_model_name_or_path") or adapter_config.get("base_model_name_or_path")
    adapter_card = Path(adapter_dir, "README.md")
    license_, datasets = summary.get("license"), list(summary.get("datasets") or [])
    if adapter_card.is_file():
        data = ModelCard.load(adapter_card, ignore_metadata_errors=True).data
        license_ = license_ or data.license
        datasets = datasets or [d for d in (data.datasets or []) if is_hub_dataset_id(d)]
    license_ = license_ or _base_license(base, base_path)
    data = _metadata(
        base=base,
        relation="merge",
        library="transformers",
        license_=license_,
        datasets=datasets,
        tags=["merge", "lora", *TAGS],
    )
    source = f"[{adapter_ref}](https://huggingface.co/{adapter_ref})" if is_hub_id(adapter_ref) else f"`{adapter_ref}`"
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{base_path}`"
    body = [
        f"# {Path(out_ref).name}",
        "",
        f"The LoRA adapter {source}{f' (revision `{revision}`)' if revision else ''} merged into {base_text}, loaded "
        f"in {dtype} (never in 4-bit: merging into quantized weights degrades the model). A standalone model: no "
        "PEFT needed to load it.",
        "",
        "## Use it",
        "",
        "```python",
        usage_snippet(base or str(base_path), out_ref, merged=True, system_prompt=summary.get("system_prompt")),
        "```",
        "",
        *chat_template_lines(Path(template_dir or adapter_dir)),
        "",
        "## LoRA that was merged",
        "",
        *_lora_lines(adapter_config, summary, params),
        "",
        "## Framework versions",
        "",
        *(f"- {k}: {v}" for k, v in framework_versions().items()),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def chat_template_lines(folder: Path) -> list[str]:
    """A "Chat template" section saying what vlm-sft changed in the saved template and why (none: nothing)."""
    from vlm_sft.rendering import template_note

    note = template_note(folder)
    if not note:
        return []
    return ["", "## Chat template", "", f"{note} Prompts built from it match the training text exactly."]


def write_training_card(
    output_dir: str | Path,
    script_args: Any,
    training_args: Any,
    model_args: Any,
    vision: Any,
    *,
    num_train: int | None = None,
    num_eval: int | None = None,
) -> Path:
    """At the end of training: record the summary and write our card over PEFT's/TRL's README.md."""
    out = Path(output_dir)
    summary = training_summary(script_args, training_args, model_args, vision, num_train=num_train, num_eval=num_eval)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    card = build_adapter_card(out, require_hub_base=False)  # the push rewrites it with the repo id
    path = out / "README.md"
    card.save(path)
    return path


def card_metadata(path: str | Path) -> dict:
    """The YAML metadata of a README.md as a dict."""
    return ModelCard.load(Path(path), ignore_metadata_errors=True).data.to_dict()
