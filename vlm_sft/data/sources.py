"""Raw records from where users keep conversations: JSON / JSONL files, `save_to_disk` folders, Hub ids.

Nothing here knows the LLaVA or messages schema; it only finds the records and where each one
starts (for error messages), and reports syntax errors with line and column.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets

from vlm_sft.data.problems import Problem

JSON_SUFFIXES = (".json", ".jsonl")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_KEY_BEFORE = re.compile(r'"((?:[^"\\]|\\.){1,64})"\s*:')
# owner/name as the Hub spells it; anything else that does not exist is reported as a missing file
_SAMPLE_KEYS = ("conversations", "messages")  # a top-level object with neither is not one sample
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class RawRecord(NamedTuple):
    index: int  # position in the file, counting bad lines too, so indices match what the user sees
    line: int | None  # line where the record starts (files only)
    value: Any


@dataclass
class Source:
    """What a path held: its records, syntax problems, and the default image folder."""

    name: str
    records: list[RawRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    base_dir: Path | None = None  # image paths are relative to this unless image_dir is given
    # Rows written by `datasets` (save_to_disk, Hub): their {"bytes", "path"} image dicts may hold absolute
    # paths that `datasets` wrote itself. Never true for JSON a person typed.
    trusted: bool = False


def read_source(path: str | Path, *, split: str | tuple[str, ...] | None = None) -> Source:
    """Records from a JSON/JSONL file, a `save_to_disk` folder, or a Hub dataset id in the local cache."""
    name, p = str(path), Path(path)
    if p.is_file():
        return _read_json_file(p)
    if p.is_dir():
        return _read_disk(p, split)
    if p.suffix.lower() not in JSON_SUFFIXES and _HUB_ID.fullmatch(name):
        return _read_hub(name, split)
    problem = Problem(
        name,
        "does not exist (expected a .json/.jsonl file, a save_to_disk folder or a Hub id).",
        "check the path; relative paths are relative to the current folder.",
    )
    return Source(name, problems=[problem])


def _read_json_file(path: Path) -> Source:
    source = Source(str(path), base_dir=path.parent)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM written by some editors is not an error
    except UnicodeDecodeError as e:
        source.problems.append(
            Problem(source.name, f"is not UTF-8 text (byte {e.start}: {e.reason}).", "save the file as UTF-8 JSON.")
        )
        return source
    except OSError as e:
        source.problems.append(Problem(source.name, f"cannot be read ({e.strerror}).", "check its permissions."))
        return source
    stripped = text.lstrip()
    if not stripped:
        source.problems.append(
            Problem(
                source.name,
                "is empty; expected a JSON list of samples or JSON Lines.",
                "write the samples into the file (see examples/workbench/train.json).",
            )
        )
        return source
    try:
        if path.suffix.lower() == ".jsonl" or (stripped.startswith("{") and _is_json_lines(text)):
            _parse_json_lines(text, source)
        else:
            _parse_json_list(text, source)
    except (ValueError, RecursionError) as e:  # not JSONDecodeError: a 5000-digit number, nesting 100,000 deep
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        source.problems.append(
            Problem(
                source.name,
                f"cannot be read as JSON data ({why}).",
                "write numbers with at most 4300 digits (or as strings) and keep nesting shallow.",
                index=len(source.records),
            )
        )
    return source


def _is_json_lines(text: str) -> bool:
    """A .json file that starts with an object is JSON Lines unless the whole text is one JSON value."""
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return e.msg == "Extra data"
    return False


def _parse_json_lines(text: str, source: Source) -> None:
    """One record per non-blank line; every bad line is reported, not just the first."""
    index = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            source.records.append(RawRecord(index, line_no, json.loads(line)))
        except json.JSONDecodeError as e:
            source.problems.append(
                Problem(
                    source.name,
                    f"invalid JSON: {e.msg}.",
                    "each line must be one complete JSON object {...}; check quotes, commas and brackets there.",
                    index=index,
                    field=_key_before(line, e.pos),
                    line=line_no,
                    column=e.colno,
                )
            )
        index += 1


def _parse_json_list(text: str, source: Source) -> None:
    """A JSON list decoded one sample at a time, so a syntax error names the sample it is in.

    After a syntax error the rest of the file cannot be read reliably, so parsing stops there.
    """
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    if text[pos] == "{":  # one sample on its own, not in a list
        try:
            value = decoder.raw_decode(text, pos)[0]
        except json.JSONDecodeError as e:
            return _syntax_problem(source, text, e.pos, 0, f"invalid JSON: {e.msg}.", start=pos)
        if not any(key in value for key in _SAMPLE_KEYS):  # e.g. {"data": [...]}: not a sample
            keys = ", ".join(map(repr, list(value)[:6])) or "none"
            return _syntax_problem(
                source, text, pos, None, f"must be a list of samples [ {{...}}, ... ]; got one object (keys: {keys})."
            )
        source.records.append(RawRecord(0, _line_at(text, pos), value))
        return
    if text[pos] != "[":
        return _syntax_problem(source, text, pos, None, "expected a JSON list of samples [ {...}, {...} ].")
    pos, line = _WHITESPACE.match(text, pos + 1).end(), 1
    last = 0
    while not text.startswith("]", pos):
        index = len(source.records)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return _syntax_problem(source, text, e.pos, index, f"invalid JSON: {e.msg}.", start=pos)
        line += text.count("\n", last, pos)  # counted incrementally: big files stay linear
        last = pos
        source.records.append(RawRecord(index, line, value))
        pos = _WHITESPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
            if text.startswith("]", pos):
                return _syntax_problem(source, text, pos, index, "trailing comma after the last sample.")
        elif not text.startswith("]", pos):
            return _syntax_problem(source, text, pos, index, "expected ',' between samples or ']' to end the list.")
    rest = _WHITESPACE.match(text, pos + 1).end()
    if rest < len(text):
        _syntax_problem(source, text, rest, None, f"extra data after the list ends at line {_line_at(text, pos)}.")


def _syntax_problem(source: Source, text: str, pos: int, index: int | None, message: str, *, start: int = 0) -> None:
    pos = min(pos, len(text))
    if pos >= len(text):
        message = message.rstrip(".") + " (the file ends too early)."
    source.problems.append(
        Problem(
            source.name,
            message,
            "fix the JSON at that place (a missing comma, quote or bracket is the usual cause).",
            index=index,
            field=_key_before(text[start:pos], pos - start),
            line=_line_at(text, pos),
            column=pos - text.rfind("\n", 0, pos),
        )
    )


def _key_before(text: str, pos: int) -> str:
    """The last object key before the error, as a hint to where in the sample it is."""
    keys = _KEY_BEFORE.findall(text[:pos])
    return f"{keys[-1]} (the last key before the error)" if keys else "(JSON syntax)"


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _raw_rows(ds: datasets.Dataset, batch_size: int = 256):
    """Rows as stored in Arrow: image columns stay {"bytes", "path"}, so images are checked by us, not decoded."""
    for batch in ds.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


def _dataset_source(name: str, ds: Any, split: str | tuple[str, ...] | None, base_dir: Path | None) -> Source:
    source = Source(name, base_dir=base_dir, trusted=True)
    if isinstance(ds, datasets.DatasetDict):
        wanted = (split,) if isinstance(split, str) else tuple(split or ("train",))
        found = [s for s in wanted if s in ds] or (list(ds) if len(ds) == 1 else [])
        if not found:
            source.problems.append(
                Problem(
                    name,
                    f"has no split {' or '.join(map(repr, wanted))} (it has {', '.join(map(repr, ds))}).",
                    "save the dataset with the split you want, or as a single Dataset.",
                )
            )
            return source
        ds = ds[found[0]]
    for index, row in enumerate(_raw_rows(ds)):
        source.records.append(RawRecord(index, None, row))
    return source


def _read_disk(path: Path, split: str | tuple[str, ...] | None) -> Source:
    name = str(path)
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any failure of a third-party loader is a problem with the user's folder
        problem = Problem(
            name,
            f"is a folder but not a dataset saved with save_to_disk ({type(e).__name__}: {e}).",
            "pass a .json/.jsonl file, or a folder written by Dataset.save_to_disk.",
        )
        return Source(name, problems=[problem])
    return _dataset_source(name, ds, split, path)


def _read_hub(repo_id: str, split: str | tuple[str, ...] | None) -> Source:
    try:
        ds = datasets.load_dataset(repo_id)
    except Exception as e:  # noqa: BLE001 - offline misses, unknown ids and bad caches all land here
        problem = Problem(
            repo_id,
            f"is not a file or folder, and loading it as a Hub dataset failed ({type(e).__name__}: {e}).",
            "check the path; for a Hub dataset, download it once with network, then set "
            "HF_HUB_OFFLINE=1 to use the local cache.",
        )
        return Source(repo_id, problems=[problem])
    return _dataset_source(repo_id, ds, split, None)
