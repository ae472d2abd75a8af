"""Did I break it? How far an adapter's answers drift from the base model's on prompts outside its training.

A probe is a list of questions (with an image or not) that the training data did not teach. The base model
and each adapter answer them greedily; drift is the share of answers that changed and the token F1 of each
adapter answer to the base answer (1.0: the same words). The default probe asks generic questions about the
eval set's own images, so it needs no extra data:

    vlm-sft eval outputs/run --recipe recipes/run.yaml --probe-file default
    vlm-sft eval outputs/run --eval-file eval.json --probe-file probe.jsonl   # {"question": ..., "image": ...}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlm_sft.evaluation.metrics import exact_match, token_f1

DEFAULT_QUESTIONS = ("Describe the image.", "What colors do you see in this picture?")
DEFAULT_PROBE_SIZE = 16  # images from the eval set, each asked every default question


class ProbeError(ValueError):
    """A probe file that cannot be read: the message names the file, the line and what to fix."""


def _row(question: str, images: list, system: list[dict]) -> dict:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    messages = [*system, {"role": "user", "content": content}]
    messages.append({"role": "assistant", "content": [{"type": "text", "text": ""}]})  # split_prompt cuts here
    return {"messages": messages, "images": images}


def default_probe(eval_rows: Sequence[dict], size: int = DEFAULT_PROBE_SIZE) -> list[dict]:
    """Every default question about each of the first `size` eval images (the run's system prompt kept)."""
    rows = []
    for row in [r for r in eval_rows if r.get("images")][:size]:
        system = [m for m in row["messages"][:1] if m["role"] == "system"]
        rows += [_row(q, list(row["images"]), system) for q in DEFAULT_QUESTIONS]
    return rows


def load_probe(path: str | Path, system_prompt: str | None = None) -> list[dict]:
    """A probe file: JSON list or JSONL of {"question": str, "image": optional path relative to the file}."""
    from vlm_sft.rendering import load_image

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ProbeError(f"{path}: cannot read the probe file ({err.strerror}).") from err
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except ValueError as err:
        expected = '{"question": ..., "image": ...}'
        raise ProbeError(f"{path}: not JSON or JSONL ({err}); expected {expected} per record.") from err
    system = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    rows = []
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("question"), str) or not record["question"]:
            raise ProbeError(f'{path}: record {i} has no "question" text; give {{"question": "..."}}.')
        images = []
        if record.get("image"):
            image_path = path.parent / record["image"]
            try:
                images = [load_image(image_path)]  # the pixels training and eval give the model
            except (OSError, ValueError) as err:
                raise ProbeError(f"{path}: record {i}: cannot open image {image_path} ({err}).") from err
        rows.append(_row(record["question"], images, system))
    if not rows:
        raise ProbeError(f"{path}: no probe questions in it.")
    return rows


def drift(base_answers: Sequence[str], answers: Sequence[str]) -> dict:
    """Share of answers that changed from the base model's, and mean token F1 to the base answers."""
    n = len(base_answers)
    changed = sum(not exact_match(a, b) for a, b in zip(answers, base_answers, strict=True))
    f1 = sum(token_f1(a, b) for a, b in zip(answers, base_answers, strict=True))
    return {"n": n, "changed": changed / n if n else 0.0, "token_f1_to_base": f1 / n if n else 0.0}


def probe_models(rows: list[dict], report: dict, *, batch_size: int, max_new_tokens: int, device: Any) -> dict:
    """Answers of the base model and of every adapter in `report` on the probe, and each adapter's drift."""
    import torch

    from vlm_sft.evaluation.generate import generate_answers
    from vlm_sft.hub.adapters import attach_adapter, load_base_model, resolve_adapter

    base, revision = report["base_model"], report["base_revision"]
    processor = _processor(base, revision, [m for m in report["models"] if m["kind"] == "adapter"])
    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    answers = {}
    for m in [{"name": "base", "kind": "base"}, *[m for m in report["models"] if m["kind"] == "adapter"]]:
        model = load_base_model(base, revision).to(device)
        if m["kind"] == "adapter":
            model = attach_adapter(model, resolve_adapter(m["path"], m["revision"]))
        answers[m["name"]] = generate_answers(
            model, processor, rows, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        del model
    questions = [r["messages"][-2]["content"][-1]["text"] for r in rows]
    return {
        "n": len(rows),
        "drift": {name: drift(answers["base"], a) for name, a in answers.items() if name != "base"},
        "examples": [
            {"question": q, "answers": {k: v[i] for k, v in answers.items()}} for i, q in enumerate(questions)
        ],
    }


def _processor(base: str, revision: str | None, adapters: list[dict]) -> Any:
    """The first adapter's saved processor (the chat template it was trained with), else the base's."""
    from transformers import AutoProcessor

    from vlm_sft.hub.adapters import load_adapter_processor, resolve_adapter

    for m in adapters:
        try:  # with the training template, as `vlm-sft eval` renders the adapter's prompts
            processor = load_adapter_processor(resolve_adapter(m["path"], m["revision"]))
        except (OSError, ValueError):
            continue
        if getattr(processor, "chat_template", None):
            return processor
    return AutoProcessor.from_pretrained(base, revision=revision)


def format_probe(probe: dict) -> str:
    """The report's drift section: one row per adapter."""
    lines = [
        f"## Drift on {probe['n']} probe prompts outside the training data",
        "",
        "How far each adapter's answers moved from the base model's: `changed` is the share of answers that differ, "
        "`token F1 to base` how many words they keep (1.0: the same answer).",
        "",
        "| adapter | changed | token F1 to base |",
        "|---|---:|---:|",
    ]
    for name, d in probe["drift"].items():
        lines.append(f"| {name} | {d['changed']:.3f} | {d['token_f1_to_base']:.3f} |")
    return "\n".join(lines) + "\n"
