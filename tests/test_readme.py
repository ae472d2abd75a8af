"""Every command in the README stays valid: make targets exist, recipes and overrides parse, CLI flags exist.

The commands' behaviour is tested where it lives (test_quickstart runs `make quickstart` in full,
test_data_cli the data commands, test_hub push / infer / merge, ...); this file catches a README
that drifts from the code.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


COMMANDS = readme_commands()


def test_the_first_two_commands_set_everything_up():
    assert COMMANDS[:2] == ["make quickstart", "make test"]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_is_valid(command: str):
    words = shlex.split(command)
    if words[0] == "make":
        done = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    elif words[:2] == ["accelerate", "launch"]:
        from vlm_sft.training.train import parse_recipe

        rest = words[2:]
        if rest[0] == "--config_file":
            assert (REPO / rest[1]).is_file(), rest[1]
            rest = rest[2:]
        assert rest[0] == "scripts/sft_vlm.py" and (REPO / rest[0]).is_file()
        import torch

        cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
        parse_recipe([str(REPO / rest[1]), *rest[2:], *cpu])  # unknown keys or bad values raise
    elif words[0] == "vlm-sft":
        from vlm_sft.cli import COMMANDS as SUBCOMMANDS
        from vlm_sft.cli import parse_command

        assert words[1] in SUBCOMMANDS, words[1]
        parse_command(words[1:])  # argparse exits (SystemExit) on an unknown flag or missing argument
    elif words[0] == "python":
        script = REPO / words[1]
        assert script.is_file(), words[1]
        done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        pytest.fail(f"README command of an unknown kind: {command}")


def test_quickstart_figures_are_those_of_a_kept_run():
    """The README's quickstart line and table are rendered from docs/quickstart_result.json, whose scores
    recompute from its answers: the figures are a run's, not typed in (`make readme-figures` regenerates both)."""
    import json

    from vlm_sft.evaluation.metrics import aggregate, score_example
    from vlm_sft.evaluation.report import add_intervals
    from vlm_sft.quickstart.readme import readme_block, render_block

    result = json.loads((REPO / "docs" / "quickstart_result.json").read_text())
    assert readme_block(REPO / "README.md") == render_block(result)
    report = result["report"]
    for m in report["models"]:
        examples = [score_example(e["answers"][m["name"]], e["reference"]) for e in report["examples"]]
        assert json.loads(json.dumps(aggregate(examples))) == m["metrics"], m["name"]
    again = json.loads(json.dumps(add_intervals(json.loads(json.dumps(report)))))  # seeded: they recompute exactly
    assert [m["intervals"] for m in again["models"]] == [m["intervals"] for m in report["models"]]
    accuracy = [m["metrics"]["exact_match"] for m in report["models"]]
    assert result["line"].startswith(
        f"quickstart: base_accuracy={accuracy[0]:.2f} finetuned_accuracy={accuracy[1]:.2f}"
    )
