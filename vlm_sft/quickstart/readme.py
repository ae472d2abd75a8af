"""The README's quickstart figures, generated from a real `make quickstart` run rather than typed in.

`vlm-sft quickstart report --update-readme` keeps the run's eval report (`docs/quickstart_result.json`: every
answer and score, the one-line summary, the training time) and rewrites the README between the markers

    <!-- quickstart-result:begin -->  ...  <!-- quickstart-result:end -->

with the line and the table rendered from it. tests/test_readme.py checks that the README shows exactly what
that file holds, and that its scores recompute from its answers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULT_FILE = Path("docs") / "quickstart_result.json"
BEGIN, END = "<!-- quickstart-result:begin -->", "<!-- quickstart-result:end -->"
_BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)


def render_block(result: dict) -> str:
    """The README block: the quickstart's last line, then base vs fine-tuned with 95 % intervals."""
    from vlm_sft.evaluation.report import format_table

    report = result["report"]
    return "\n".join(
        [
            BEGIN,
            "",
            f"    {result['line']}",
            "",
            f"Base vs fine-tuned on the {report['n']} held-out digits (`outputs/quickstart/eval/eval_report.md`), "
            "each score with its 95 % bootstrap interval over the examples:",
            "",
            format_table(report),
            "",
            END,
        ]
    )


def save_result(report: dict, line: str, path: str | Path = RESULT_FILE) -> Path:
    """Keep the run's report and line (no absolute paths: the file is committed)."""
    report = {**report, "eval_file": Path(report["eval_file"]).name, "base_model": Path(report["base_model"]).name}
    report["models"] = [{**m, "path": Path(m["path"]).name} for m in report["models"]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"line": line, "report": report}, indent=1, ensure_ascii=False) + "\n")
    return path


def update_readme(result: dict, readme: str | Path = "README.md") -> None:
    """Replace the README's quickstart block with one rendered from `result`; refuses a README without markers."""
    readme = Path(readme)
    text = readme.read_text()
    if not _BLOCK.search(text):
        raise ValueError(f"{readme}: no {BEGIN} ... {END} block to update.")
    readme.write_text(_BLOCK.sub(lambda _: render_block(result), text, count=1))


def readme_block(readme: str | Path = "README.md") -> str | None:
    """The quickstart block as the README has it now, or None."""
    match = _BLOCK.search(Path(readme).read_text())
    return match.group(0) if match else None
