"""Honest evaluation: answer held-out questions by generation with the base model and with adapters, and score.

Batched generation with left padding (greedy unless asked to sample); the prompt is the conversation up
to its last assistant reply, rendered with the generation prompt; the reference is that reply. Scores
come from `vlm_sft.evaluation.metrics`; the report is written as eval_report.json / .md / .png.

    vlm-sft eval outputs/quickstart --eval-file .cache/digits/eval.json --image-dir .cache/digits/images
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlm_sft import rendering
from vlm_sft.evaluation.metrics import score
from vlm_sft.evaluation.report import (
    REPORT_FILES,
    add_intervals,
    format_markdown,
    format_table,
    table_rows,
    worst_examples,
    write_report,
)
from vlm_sft.hub.adapters import attach_adapter, base_of, load_base_model, resolve_adapter, trained_system_prompt
from vlm_sft.modeling.precision import inference_dtype

logger = logging.getLogger(__name__)

# The report's formatting lives in vlm_sft.evaluation.report; its names are re-exported here.
__all__ = [
    "REPORT_FILES",
    "AdapterSpec",
    "EvalSet",
    "evaluate_models",
    "format_markdown",
    "format_table",
    "generate_answers",
    "load_eval_set",
    "split_prompt",
    "table_rows",
    "write_report",
]

# The report's functions live in vlm_sft.evaluation.report; these names stay importable from here.
__all__ += ["REPORT_FILES", "table_rows", "worst_examples"]


def split_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """(conversation before the last assistant reply, that reply)."""
    messages = rendering.clean_messages(messages)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], rendering.reply_text(messages[last])


@torch.no_grad()
def generate_answers(
    model: Any,
    processor: Any,
    rows: Iterable[dict],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    desc: str | None = None,
) -> list[str]:
    """Answers to each row's last question (greedy by default); `desc` shows a progress bar with that label."""
    from tqdm.auto import tqdm

    model.eval()
    rows = list(rows)
    answers: list[str] = []
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    bar = tqdm(total=len(rows), desc=desc, unit="answer", disable=desc is None)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts = [split_prompt(r["messages"])[0] for r in batch]
        # Rendered and encoded as training rendered them; left-padded: generation continues from the last token.
        inputs = rendering.prompt_inputs(processor, prompts, rendering.nested_images(batch)).to(model.device)
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=processor.tokenizer.pad_token_id,
            **sampling,
        )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        answers.extend(t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True))
        bar.update(len(batch))
    bar.close()
    return answers


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class AdapterSpec:
    """An adapter to evaluate: a local folder or a Hub id (with an optional revision), shown as `name`."""

    path: str
    revision: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or Path(self.path.rstrip("/")).name or self.path

    @classmethod
    def parse(cls, spec: str) -> AdapterSpec:
        """`[NAME=]FOLDER_OR_HUB_ID[@REVISION]`, e.g. `outputs/qs`, `tuned=me/llava-lora@v2`; an existing path wins."""
        name = ""
        # An existing folder named like `wd=0.1` is that folder, not NAME=PATH.
        if "=" in spec and "/" not in spec.split("=", 1)[0] and not Path(spec).exists():
            name, spec = spec.split("=", 1)
        revision = None
        if "@" in spec and not Path(spec).exists():  # a folder whose name holds "@" stays a folder
            spec, revision = spec.rsplit("@", 1)
        return cls(spec, revision or None, name)


@dataclass
class EvalSet:
    """Held-out rows with what the report shows about each: reference reply, question and image names."""

    path: str
    rows: list[dict]
    references: list[str]
    questions: list[str]
    image_names: list[list[str]] = field(default_factory=list)
    system_prompt: str | None = None  # the one every conversation without its own was given, for the report
    note: str = ""  # shown in the report: why the set is not exactly what training held out, when it is not


def _image_names(ds: Any, n: int) -> list[list[str]]:
    """File names of each row's images, read without decoding them ("<embedded>" for images stored as bytes)."""
    raw = ds.select(range(n)).with_format("arrow")[:]["images"].to_pylist()
    return [[Path(img["path"]).name if img.get("path") else "<embedded>" for img in row or []] for row in raw]


def load_eval_set(
    path: str | Path,
    image_dir: str | Path | None = None,
    *,
    data_format: str = "auto",
    split: str | tuple[str, ...] | None = None,
    limit: int | None = None,
    system_prompt: str | None = None,
) -> EvalSet:
    """An eval set in any format `vlm_sft.data.loading` reads (validated the same way as training data)."""
    from vlm_sft.data.loading import EVAL_SPLITS, load_conversations

    ds = load_conversations(
        path, image_dir, system_prompt, data_format=data_format, split=split or EVAL_SPLITS + ("train",)
    )
    eval_set = eval_set_from_dataset(ds, str(path), limit)
    eval_set.system_prompt = system_prompt
    return eval_set


def eval_set_from_dataset(ds: Any, source: str, limit: int | None = None) -> EvalSet:
    """The first `limit` rows of a validated Dataset, with each row's last question and its reference reply."""
    n = len(ds) if limit is None else min(limit, len(ds))
    rows = [ds[i] for i in range(n)]
    references, questions = [], []
    for row in rows:
        prompt, reference = split_prompt(row["messages"])
        references.append(reference)
        questions.append(rendering.reply_text(prompt[-1]).strip() if prompt else "")
    return EvalSet(source, rows, references, questions, _image_names(ds, n))


def _device_and_dtype(device: str, dtype: str) -> tuple[str, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = inference_dtype(dtype, device)  # the one rule eval, infer and merge share
    logger.info("Scoring in %s on %s.", dtype, device)
    return device, getattr(torch, dtype)


def _load_processor(path: str, revision: str | None) -> Any | None:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, revision=revision)
    except (OSError, ValueError):  # an adapter saved without its processor
        return None


def _with_template(processor: Any | None) -> Any | None:
    return processor if getattr(processor, "chat_template", None) else None


def _adapter_processor(folder: Path) -> Any | None:
    """The adapter's processor, with the training template (applied here to adapters saved before it existed)."""
    processor = _with_template(_load_processor(str(folder), None))
    if processor is not None:
        rendering.use_training_template(processor)
    return processor


def _load(base: str, base_revision: str | None, adapter_dir: Path | None, device: str, dtype: torch.dtype):
    """A fresh base model (`vlm_sft.hub.adapters`'s loader), with the adapter of a resolved folder on top when given.

    Fresh for every adapter because PEFT's `unload()` keeps the trained copy of `modules_to_save` (our
    projector): reusing one base across adapters would evaluate later ones on an already-tuned projector.
    """
    model = load_base_model(base, base_revision, dtype).to(device)
    return attach_adapter(model, adapter_dir) if adapter_dir is not None else model


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_models(
    eval_set: EvalSet,
    adapters: Sequence[AdapterSpec],
    *,
    base: str | None = None,
    base_revision: str | None = None,
    include_base: bool = True,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    tolerance: float = 0.0,
    worst: int = 10,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> dict:
    """Generate with the base model and each adapter, score every answer; the report as a dict (see write_report)."""
    if not adapters and not include_base:
        raise ValueError("Nothing to evaluate: give at least one adapter, or keep the base model in.")
    names = [a.name for a in adapters]
    if len(set(names)) != len(names) or "base" in names:
        raise ValueError(f"Adapter names must be unique and not 'base'; got {names}. Name them: NAME=PATH.")
    # Local folders, or HF-cache snapshots of Hub ids; refused here when not a safetensors adapter.
    folders = {a.name: resolve_adapter(a.path, a.revision) for a in adapters}
    if base is None:
        if not adapters:
            raise ValueError("Give the base model (--base) when evaluating no adapter.")
        base, trained_revision = base_of(folders[adapters[0].name], None)
        base_revision = base_revision or trained_revision
    for adapter in adapters:
        try:
            trained_on, _ = base_of(folders[adapter.name], None)
        except (OSError, ValueError):
            continue  # an explicit base is evaluated whatever the adapter names
        if trained_on != base:  # legitimate (a local copy of a Hub model), but worth a look
            logger.warning("%s was trained on %s; evaluating it on %s.", adapter.name, trained_on, base)
    torch_device, torch_dtype = _device_and_dtype(device, dtype)
    # Each adapter's own processor (saved with it) when it has a chat template; the base's otherwise. A base
    # without a chat template (a pretrained, not chat-tuned, model) is prompted with the adapter's.
    own = {a.name: _adapter_processor(folders[a.name]) for a in adapters}
    first_own = next(filter(None, own.values()), None)
    base_processor = _with_template(_load_processor(base, base_revision)) or first_own
    own_images = getattr(first_own, "image_processor", None)
    if base_processor is not None and type(getattr(base_processor, "image_processor", None)) is type(own_images):
        # The base sees the pixels the adapter was trained and is scored on (the run's resolution keys).
        base_processor.image_processor = own_images
    generation = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        **({"temperature": temperature, "top_p": top_p} if do_sample else {}),
        "seed": seed,
    }
    todo: list[tuple[str, AdapterSpec | None]] = ([("base", None)] if include_base else []) + [
        (a.name, a) for a in adapters
    ]
    # Each adapter is asked with the system prompt it was trained with (rows with their own keep theirs); the
    # base with the first adapter's, so both answer the same prompt.
    systems = {a.name: trained_system_prompt(folders[a.name]) for a in adapters}
    systems["base"] = next(iter(systems.values()), None)
    models, answers = [], {}
    for name, adapter in todo:
        processor = own.get(name) or base_processor
        if processor is None:
            raise ValueError(f"No processor with a chat template for {name!r} (looked in the adapter and in {base}).")
        model = _load(base, base_revision, folders[name] if adapter else None, torch_device, torch_dtype)
        torch.manual_seed(seed)  # only matters when sampling; greedy decoding is deterministic
        start = time.perf_counter()
        answers[name] = generate_answers(
            model,
            processor,
            [{**r, "messages": rendering.with_system_prompt(r["messages"], systems[name])} for r in eval_set.rows],
            desc=name if progress else None,
            **{k: v for k, v in generation.items() if k != "seed"},
        )
        seconds = time.perf_counter() - start
        summary, per_example = score(answers[name], eval_set.references, tolerance=tolerance)
        models.append(
            {
                "name": name,
                "kind": "adapter" if adapter else "base",
                "path": adapter.path if adapter else base,
                "revision": adapter.revision if adapter else base_revision,
                "system_prompt": _system_used(eval_set.rows, systems[name]),
                "generation_seconds": round(seconds, 2),
                "metrics": summary,
                "per_example": per_example,
            }
        )
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return _assemble(eval_set, base, base_revision, generation, tolerance, models, answers, worst)


def _system_used(rows: list[dict], added: str | None) -> str | None:
    """The system prompt the rows were asked with: one text, or None when none (or rows differ)."""
    texts = {rendering.reply_text(r["messages"][0]) if r["messages"][0]["role"] == "system" else added for r in rows}
    return texts.pop() if len(texts) == 1 else None


def _assemble(
    eval_set: EvalSet,
    base: str,
    base_revision: str | None,
    generation: dict,
    tolerance: float,
    models: list[dict],
    answers: dict[str, list[str]],
    worst: int,
) -> dict:
    """Per-example rows (question, images, reference, every model's answer and score) and the worst lists."""
    examples = []
    for i, reference in enumerate(eval_set.references):
        examples.append(
            {
                "index": i,
                "images": eval_set.image_names[i] if eval_set.image_names else [],
                "question": eval_set.questions[i],
                "reference": reference,
                "kind": models[0]["per_example"][i]["kind"],
                "answers": {m["name"]: answers[m["name"]][i] for m in models},
                "scores": {m["name"]: m["per_example"][i] for m in models},
            }
        )
    for m in models:
        del m["per_example"]  # kept once, per example, above
    report = {
        "eval_file": eval_set.path,
        "eval_set_note": eval_set.note,
        "n": len(examples),
        "base_model": base,
        "base_revision": base_revision,
        "generation": generation,
        "numeric_tolerance": tolerance,
        "system_prompt": eval_set.system_prompt,
        "models": models,
        "worst": {m["name"]: worst_examples(examples, m["name"], worst) for m in models if m["kind"] == "adapter"},
        "examples": examples,
    }
    return add_intervals(report)
