"""Batch inference: answer a JSONL file of questions about images, in batches, resumably.

    vlm-sft infer --adapter outputs/quickstart --file questions.jsonl --out answers.jsonl

Each line of the questions file: {"image": "a.png" | ["a.png", "b.png"], "prompt": "...", "id": "optional"}
(`images` is accepted for `image`; image paths are relative to the questions file's folder). Each answer line
repeats the id (the line number when the question has none), the prompt and the images, plus the answer. A
rerun skips ids already in the answers file, so an interrupted run continues where it stopped. Prompts are
rendered by `generate_answers`, the path `vlm-sft eval` uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_sft.data.validation import inspect_image
from vlm_sft.evaluation.generate import generate_answers

EXAMPLE_LINE = '{"id": "q1", "image": "images/a.png", "prompt": "What digit is this?"}'


class QuestionsError(ValueError):
    """A questions or answers file that cannot be used as it is; the message names the file, line and field."""


@dataclass(frozen=True)
class Question:
    """One line of the questions file: its id, image paths (as written), resolved image files and prompt."""

    id: str | int
    images: tuple[str, ...]
    files: tuple[Path, ...]
    prompt: str


def _field_error(path: Path, line: int, field: str, problem: str) -> QuestionsError:
    return QuestionsError(f"{path} line {line}, field {field!r}: {problem}; write lines like {EXAMPLE_LINE}.")


def _parse(path: Path, line: int, text: str) -> Question:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise QuestionsError(f"{path} line {line}: not JSON ({err.msg}); write lines like {EXAMPLE_LINE}.") from None
    if not isinstance(record, dict):
        raise QuestionsError(f"{path} line {line}: expected a JSON object; write lines like {EXAMPLE_LINE}.")
    unknown = set(record) - {"id", "image", "images", "prompt"}
    if unknown:
        raise _field_error(path, line, sorted(unknown)[0], "unknown field (expected id, image or images, prompt)")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _field_error(path, line, "prompt", f"expected a non-empty string, got {prompt!r}")
    images = record.get("image", record.get("images", []))
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise _field_error(path, line, "image", f"expected a path or a list of paths, got {images!r}")
    files = tuple(path.parent / Path(i).expanduser() for i in images)
    for name, file in zip(images, files, strict=True):
        if not file.is_file():
            raise _field_error(
                path, line, "image", f"{name!r} is not a file ({file}); paths are relative to {path.parent}"
            )
    question_id = record.get("id", line)
    if not isinstance(question_id, str | int) or isinstance(question_id, bool):
        raise _field_error(path, line, "id", f"expected a string or an integer, got {question_id!r}")
    return Question(question_id, tuple(images), files, prompt)


def read_questions(path: str | Path) -> list[Question]:
    """Every question of a JSONL file, checked (fields, image files, unique ids) before anything is answered."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise QuestionsError(f"cannot read the questions file {path}: {err}") from None
    questions, seen = [], {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        question = _parse(path, number, text)
        if question.id in seen:
            raise _field_error(path, number, "id", f"{question.id!r} is also the id of line {seen[question.id]}")
        seen[question.id] = number
        questions.append(question)
    if not questions:
        raise QuestionsError(f"{path} holds no questions; write one JSON object per line, like {EXAMPLE_LINE}.")
    return questions


def answered_ids(out: str | Path) -> set[str | int]:
    """Ids already answered in `out`; a last line cut off by an interrupted run is dropped from the file."""
    out = Path(out)
    if not out.is_file():
        return set()
    lines = out.read_bytes().splitlines(keepends=True)
    ids, offset = set(), 0
    for number, raw in enumerate(lines, start=1):
        try:
            ids.add(json.loads(raw)["id"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            if number < len(lines):
                raise QuestionsError(f"{out} line {number} is not an answer line: give another --out.") from None
            with out.open("r+b") as f:  # the line being written when the run stopped: answered again
                f.truncate(offset)
            return ids
        offset += len(raw)
    if lines and not lines[-1].endswith(b"\n"):
        with out.open("ab") as f:
            f.write(b"\n")
    return ids


def _row(question: Question, system_prompt: str | None) -> dict:
    """The question as an eval row (images decoded as evaluation decodes them); the empty reply is split off."""
    import datasets

    decode = datasets.Image().decode_example
    for file in question.files:
        problem = inspect_image(file)
        if problem:
            raise QuestionsError(f"question {question.id!r}: image {file}: {problem}")
    images = [decode({"path": str(file), "bytes": None}) for file in question.files]
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question.prompt}]
    messages += [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]},
    ]
    return {"images": images, "messages": messages}


def _batches(items: list[Question], size: int) -> Iterator[list[Question]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answer_file(
    model: Any,
    processor: Any,
    questions: list[Question],
    out: str | Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    system_prompt: str | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Answer the questions not yet in `out`, appending each batch as it finishes; (answered now, skipped)."""
    from tqdm.auto import tqdm

    out = Path(out)
    done = answered_ids(out)
    todo = [q for q in questions if q.id not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(todo), desc="answers", unit="answer", disable=not progress) as bar, out.open("a") as f:
        for batch in _batches(todo, batch_size):
            rows = [_row(q, system_prompt) for q in batch]
            answers = generate_answers(model, processor, rows, batch_size=batch_size, max_new_tokens=max_new_tokens)
            for question, answer in zip(batch, answers, strict=True):
                record = {"id": question.id, "images": list(question.images), "prompt": question.prompt}
                f.write(json.dumps({**record, "answer": answer}, ensure_ascii=False) + "\n")
            f.flush()  # a batch answered is a batch kept, whatever stops the run next
            bar.update(len(batch))
    return len(todo), len(questions) - len(todo)
