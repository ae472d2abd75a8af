"""Honest evaluation: answer held-out questions by generation with the base model and with adapters, and score.

Batched generation with left padding (greedy unless asked to sample); the prompt is the conversation up
to its last assistant reply, rendered with the generation prompt; the reference is that reply. Scores
come from `vlm_sft.evaluation.metrics`; the report is written as eval_report.json / .md / .png.

    vlm-sft eval outputs/quickstart --eval-file .cache/digits/eval.json --image-dir .cache/digits/images
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlm_sft import rendering
from vlm_sft.evaluation.metrics import HEADLINE, headline_value, score
from vlm_sft.hub.adapters import attach_adapter, base_of, load_base_model, resolve_adapter, trained_system_prompt

logger = logging.getLogger(__name__)

__all__ = [
    "AdapterSpec",
    "EvalSet",
    "evaluate_models",
    "format_table",
    "generate_answers",
    "load_eval_set",
    "split_prompt",
    "write_report",
]

REPORT_FILES = ("eval_report.json", "eval_report.md", "eval_report.png")


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
        """`[NAME=]FOLDER_OR_HUB_ID[@REVISION]`, e.g. `outputs/qs`, `tuned=me/llava-lora@v2`."""
        name = ""
        if "=" in spec and "/" not in spec.split("=", 1)[0]:
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
    return eval_set_from_dataset(ds, str(path), limit)


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
    if dtype == "auto":  # bf16 where it is fast; fp32 on CPU, where bf16 matmuls are slow or emulated
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
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
    base_processor = _with_template(_load_processor(base, base_revision)) or next(filter(None, own.values()), None)
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
    return {
        "eval_file": eval_set.path,
        "n": len(examples),
        "base_model": base,
        "base_revision": base_revision,
        "generation": generation,
        "numeric_tolerance": tolerance,
        "models": models,
        "worst": {m["name"]: worst_examples(examples, m["name"], worst) for m in models if m["kind"] == "adapter"},
        "examples": examples,
    }


def worst_examples(examples: list[dict], name: str, k: int) -> list[int]:
    """Indices of the k examples `name` scores lowest on; among equals, those where it fell furthest below base."""

    def key(e: dict) -> tuple[float, float, int]:
        own = e["scores"][name]["score"]
        base = e["scores"]["base"]["score"] if "base" in e["scores"] else own
        return own, own - base, e["index"]

    return [e["index"] for e in sorted(examples, key=key)[:k]]


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, label: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if "MAE" in label else f"{value:.3f}"


def table_rows(report: dict) -> list[tuple[str, list[float | None]]]:
    """(metric label, one value per model) for every headline metric some model has, then per JSON field."""
    summaries = [m["metrics"] for m in report["models"]]
    rows = []
    for label, path, _ in HEADLINE:
        values = [headline_value(s, path) for s in summaries]
        if any(v is not None for v in values):
            rows.append((label, values))
    fields = sorted({k for s in summaries if s["json"] for k in s["json"]["per_field"]})
    for key in fields:
        rows.append((f"JSON field `{key}`", [(s["json"] or {}).get("per_field", {}).get(key) for s in summaries]))
    return rows


def format_table(report: dict) -> str:
    """Markdown table: one row per metric, base and each adapter side by side, with each adapter's change."""
    models = report["models"]
    has_base = models[0]["kind"] == "base"
    header = ["metric"]
    for i, m in enumerate(models):
        header.append(f"{m['name']}")
        if has_base and i > 0:
            header.append("Δ vs base")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for label, values in table_rows(report):
        cells = [label]
        for i, v in enumerate(values):
            cells.append(_fmt(v, label))
            if has_base and i > 0:
                base_v = values[0]
                cells.append("-" if v is None or base_v is None else f"{v - base_v:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: str, limit: int = 120) -> str:
    """A table cell: one line, pipes escaped, long answers cut (the JSON report has them in full)."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_markdown(report: dict) -> str:
    """eval_report.md: what was evaluated, the side-by-side table, then each adapter's worst examples."""
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report["models"][0]["metrics"]["kinds"].items()))
    gen = report["generation"]
    decoding = "greedy" if not gen["do_sample"] else f"sampling (T={gen['temperature']}, top_p={gen['top_p']})"
    lines = [
        "# Evaluation report",
        "",
        f"- eval set: `{report['eval_file']}` ({report['n']} examples: {kinds})",
        f"- base model: `{report['base_model']}`"
        + (f" @ {report['base_revision']}" if report["base_revision"] else ""),
        f"- generation: {decoding}, max_new_tokens={gen['max_new_tokens']}, batch size {gen['batch_size']}",
    ]
    for m in report["models"]:
        rev = f" @ {m['revision']}" if m["revision"] else ""
        system = f", system prompt {m['system_prompt']!r}" if m.get("system_prompt") else ""
        if m["kind"] == "adapter" or system:
            lines.append(f"- {m['kind']} `{m['name']}`: `{m['path']}`{rev}{system}")
    lines += ["", format_table(report), ""]
    by_index = {e["index"]: e for e in report["examples"]}
    for name, indices in report["worst"].items():
        has_base = "base" in by_index[indices[0]]["answers"] if indices else False
        lines += [f"## Worst examples: {name}", ""]
        header = ["#", "image", "question", "reference"] + (["base"] if has_base else []) + [name, "score"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        for i in indices:
            e = by_index[i]
            cells = [str(i), ", ".join(e["images"]) or "-", _cell(e["question"], 60), _cell(e["reference"])]
            cells += [_cell(e["answers"]["base"])] if has_base else []
            cells += [_cell(e["answers"][name]), f"{e['scores'][name]['score']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write eval_report.json, eval_report.md and eval_report.png into out_dir; returns their paths."""
    from vlm_sft.evaluation.plots import plot_eval_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name.rsplit(".", 1)[1]: out / name for name in REPORT_FILES}
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    paths["md"].write_text(format_markdown(report))
    plot_eval_report(report, paths["png"])
    return paths
