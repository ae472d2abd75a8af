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

The text lives in Jinja templates (templates/adapter_card.md, templates/merged_card.md), rendered with
`huggingface_hub.ModelCard.from_template` as TRL renders its cards; this module computes the values they show
(`adapter_card_values`, `merged_card_values`). A new section is a block in the template fed by a new value, or,
without touching the template, an entry {"title", "body"} in the values' `extra_sections`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from vlm_sft.hub.card_sections import (
    eval_section,
    lora_rows,
    parameter_rows,
    quantization_text,
    result_rows,
    run_losses,
    table_cell,
)
from vlm_sft.hub.run_summary import (
    SUMMARY_FILE,
    framework_versions,
    is_hub_dataset_id,
    is_hub_id,
    training_summary,
)
from vlm_sft.hub.serving import serving_paragraph
from vlm_sft.modeling.parameters import adapter_size_mb
from vlm_sft.modeling.precision import precision_line

logger = logging.getLogger(__name__)

# Names other modules and tests import from here; the run summary's live in vlm_sft.hub.run_summary.
__all__ = [
    "SUMMARY_FILE",
    "BaseModelIdError",
    "adapter_card_values",
    "build_adapter_card",
    "build_merged_card",
    "card_metadata",
    "framework_versions",
    "is_hub_dataset_id",
    "is_hub_id",
    "merged_card_values",
    "render_card",
    "resolve_base_model",
    "training_summary",
    "usage_snippet",
    "write_training_card",
]

TEMPLATES = Path(__file__).parent / "templates"
TAGS = ["peft", "trl", "sft", "vision-language", "image-text-to-text", "vlm-sft"]
DEFAULT_PROMPT = "Describe this image."


class BaseModelIdError(ValueError):
    """The card needs the base model's Hub id and only a local path is known."""


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
        except (OSError, ValueError, yaml.YAMLError) as err:  # a malformed base card must not break ours
            logger.info("No license read from %s: %s", path, err)
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


def kept_sentence(kept: dict | None) -> str | None:
    """The card's sentence on which step's adapter this is and why (from training_summary.json's `kept`)."""
    if not kept:
        return None
    return f"This adapter is the one from step {kept['step']}: {kept['reason']}."


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


def render_card(template: str, data: ModelCardData, values: dict[str, Any]) -> ModelCard:
    """`templates/<template>` rendered with the metadata and the values (as TRL renders its model cards)."""
    return ModelCard.from_template(data, template_path=TEMPLATES / template, **values)


def adapter_card_values(
    output_dir: str | Path,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    description: str | None = None,
    require_hub_base: bool = True,
) -> tuple[ModelCardData, dict[str, Any]]:
    """The adapter card's metadata and the values templates/adapter_card.md shows, from the files in `output_dir`."""
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
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{base_path}`"
    data_text = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets)
    if not data_text and summary.get("train_data"):
        data_text = f"`{summary['train_data']}`"
    n = summary.get("num_train_samples")
    trained_on = f"Trained on {data_text}" if data_text else "Trained"
    if n:
        trained_on += f" ({n:,} conversations)"
    system_prompt = summary.get("system_prompt")
    hyper = summary.get("hyperparameters") or {}
    batch_line = None
    if hyper.get("num_processes"):
        batch_line = (
            f"Batch: {hyper['per_device_train_batch_size']} per device x {hyper['gradient_accumulation_steps']} "
            f"accumulation x {hyper['num_processes']} processes = {hyper['effective_batch_size']} samples per step."
        )
    size_mb = adapter_size_mb(out)
    parameter_summary = f"Adapter size: {size_mb:.2f} MB."
    if params:
        parameter_summary = f"Trainable: {params['percent']:.3f}% of the model's parameters. {parameter_summary}"
    report = _read_json(out / "eval_report.json")
    versions = summary.get("framework_versions")
    values = {
        "title": (repo_id or out.name).split("/")[-1],
        "description": description
        or (
            f"A {'QLoRA' if quantized else 'LoRA'} adapter that fine-tunes the vision-language model {base_text} "
            f"to answer questions about images. {trained_on} by supervised fine-tuning on the assistant replies "
            "(TRL's SFTTrainer, via vlm-sft)."
        ),
        "usage_python": usage_snippet(base or str(base_path), model_ref, system_prompt=system_prompt),
        "model_ref": model_ref,
        "prompt": DEFAULT_PROMPT,
        "system_prompt": system_prompt,
        "system_prompt_repr": repr(system_prompt),
        "serving": serving_paragraph(adapter_config, summary),
        "chat_template": chat_template_note(out),
        "precision": precision_line(summary["training_precision"]) if summary.get("training_precision") else None,
        "lora_rows": lora_rows(adapter_config, summary, params),
        "quantization": quantization_text(summary),
        "hyperparameter_rows": [(k, table_cell(v)) for k, v in hyper.items()],
        "batch_line": batch_line,
        "parameter_rows": parameter_rows(params),
        "parameter_summary": parameter_summary,
        "result_rows": result_rows(run_losses(state)),
        "kept": kept_sentence(summary.get("kept")),
        "loss_plot": (out / "loss.png").is_file(),
        "evaluation": None if report is None else eval_section(report),
        "eval_report_md": (out / "eval_report.md").is_file(),
        "extra_sections": [],
        "versions_title": "Framework versions" if versions else "Framework versions (where this card was written)",
        "versions": versions or framework_versions(quantized),
    }
    return data, values


def build_adapter_card(output_dir: str | Path, **options: Any) -> ModelCard:
    """The adapter's card from the files in `output_dir` (options: those of `adapter_card_values`); `repo_id` is
    what the usage snippet loads."""
    return render_card("adapter_card.md", *adapter_card_values(output_dir, **options))


def merged_card_values(
    adapter_dir: str | Path,
    *,
    adapter_ref: str,
    revision: str | None,
    base_model: str | None,
    dtype: str,
    out_ref: str,
    template_dir: str | Path | None = None,
) -> tuple[ModelCardData, dict[str, Any]]:
    """The merged model's metadata (`base_model_relation: merge`) and the values templates/merged_card.md shows.

    `template_dir`: where the merged processor was saved (its chat template is described; default: the adapter's).
    """
    adapter_config, summary, params, _ = _load_inputs(Path(adapter_dir))
    base = resolve_base_model(adapter_config, summary, base_model, required=False)
    base_path = summary.get("base_model_name_or_path") or adapter_config.get("base_model_name_or_path")
    adapter_card = Path(adapter_dir, "README.md")
    license_, datasets = summary.get("license"), list(summary.get("datasets") or [])
    if adapter_card.is_file():
        card_data = ModelCard.load(adapter_card, ignore_metadata_errors=True).data
        license_ = license_ or card_data.license
        datasets = datasets or [d for d in (card_data.datasets or []) if is_hub_dataset_id(d)]
    license_ = license_ or _base_license(base, base_path)
    data = _metadata(
        base=base,
        relation="merge",
        library="transformers",
        license_=license_,
        datasets=datasets,
        tags=["merge", "lora", *TAGS],
    )
    values = {
        "title": Path(out_ref).name,
        "source": f"[{adapter_ref}](https://huggingface.co/{adapter_ref})"
        if is_hub_id(adapter_ref)
        else f"`{adapter_ref}`",
        "revision": revision,
        "base_text": f"[{base}](https://huggingface.co/{base})" if base else f"`{base_path}`",
        "dtype": dtype,
        "usage_python": usage_snippet(
            base or str(base_path), out_ref, merged=True, system_prompt=summary.get("system_prompt")
        ),
        "lora_rows": lora_rows(adapter_config, summary, params),
        "chat_template": chat_template_note(Path(template_dir or adapter_dir)),
        "extra_sections": [],
        "versions": framework_versions(),
    }
    return data, values


def build_merged_card(adapter_dir: str | Path, **options: Any) -> ModelCard:
    """The card of a model merged from an adapter (options: those of `merged_card_values`)."""
    return render_card("merged_card.md", *merged_card_values(adapter_dir, **options))


def chat_template_note(folder: Path) -> str | None:
    """The "Chat template" section: what vlm-sft changed in the saved template and why (None: nothing changed)."""
    from vlm_sft.rendering import template_note

    note = template_note(folder)
    return f"{note} Prompts built from it match the training text exactly." if note else None


def write_training_card(
    output_dir: str | Path,
    script_args: Any,
    training_args: Any,
    model_args: Any,
    vision: Any,
    *,
    num_train: int | None = None,
    num_eval: int | None = None,
    kept: dict | None = None,
) -> Path:
    """At the end of training: record the summary and write our card over PEFT's/TRL's README.md.

    `kept` (`vlm_sft.training.scoring.kept_step`) says which step's adapter is the result and why.
    """
    out = Path(output_dir)
    summary = training_summary(script_args, training_args, model_args, vision, num_train=num_train, num_eval=num_eval)
    if kept is not None:
        summary["kept"] = kept
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    card = build_adapter_card(out, require_hub_base=False)  # the push rewrites it with the repo id
    path = out / "README.md"
    card.save(path)
    return path


def card_metadata(path: str | Path) -> dict:
    """The YAML metadata of a README.md as a dict."""
    return ModelCard.load(Path(path), ignore_metadata_errors=True).data.to_dict()
