"""Problems found in users' data, and the report that lists them all at once."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Problems of one kind beyond this many are counted, not listed (`vlm-sft data validate --all` lists them).
SHOWN_PER_KIND = 3
_INDEX = re.compile(r"\[\d+\]")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where it is, what was expected, and what to do about it."""

    file: str
    message: str  # what is wrong and what was expected
    fix: str  # what the person should do
    index: int | None = None  # sample index in the file (0-based, the order of the file)
    sample_id: str | None = None
    field: str | None = None  # e.g. "conversations[1].value"
    line: int | None = None
    column: int | None = None
    warning: bool = False  # warnings are reported but do not make the data invalid

    def __str__(self) -> str:
        where = [self.file]
        if self.index is not None:
            where.append(f"sample {self.index}" + (f" (id {self.sample_id!r})" if self.sample_id is not None else ""))
        if self.line is not None:
            where.append(f"line {self.line}" + (f", column {self.column}" if self.column is not None else ""))
        if self.field:
            where.append(f"field {self.field}")
        kind = "warning" if self.warning else "error"
        return f"{kind}: {', '.join(where)}: {self.message} Fix: {self.fix}"


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not p.warning]


def warnings_of(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.warning]


def summary(problems: list[Problem]) -> str:
    """One line: how many errors in how many samples, and how many warnings."""
    errs = errors(problems)
    samples = {(p.file, p.index) for p in errs if p.index is not None}
    n_warn = len(problems) - len(errs)
    text = f"{len(errs)} error{'s' * (len(errs) != 1)}"
    if samples:
        text += f" in {len(samples)} sample{'s' * (len(samples) != 1)}"
    return text + f", {n_warn} warning{'s' * (n_warn != 1)}"


def _kind(problem: Problem) -> tuple:
    """Problems that differ only in their sample (and list positions) are one kind."""
    return problem.warning, problem.file, _INDEX.sub("[]", problem.field or ""), problem.message, problem.fix


def format_report(problems: list[Problem], show_all: bool = False) -> str:
    """Problems (errors first, in file order), each kind's first few and then its count, then the summary.

    2,000 samples with the same mistake read as three examples and "... 1,997 more like this", not 2,000 lines.
    """
    ordered = errors(problems) + warnings_of(problems)
    if show_all:
        return "\n".join([*(str(p) for p in ordered), summary(problems)])
    kinds: dict[tuple, list[Problem]] = {}
    for problem in ordered:
        kinds.setdefault(_kind(problem), []).append(problem)
    lines = []
    for same in kinds.values():
        lines += [str(p) for p in same[:SHOWN_PER_KIND]]
        rest = same[SHOWN_PER_KIND:]
        if rest:
            where = ", ".join(str(p.index) for p in rest[:5] if p.index is not None)
            lines.append(
                f"  ... and {len(rest):,} more like this"
                + (f" (samples {where}{', ...' if len(rest) > 5 else ''})" if where else "")
                + "; `vlm-sft data validate --all` lists every one."
            )
    return "\n".join([*lines, summary(problems)])
