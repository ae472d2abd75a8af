"""The `vlm-sft` console script: one subcommand per module, imported only when used.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`
(0 = success, 1 = the input is invalid and a report was printed, 2 = usage error). A module that sets
`TAKES_RECIPE_KEYS = True` gets the `--key value` pairs it does not define itself in `args.recipe_keys`.
Every option may be spelled as a recipe key is (`--image_dir`) or with dashes (`--image-dir`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

# name -> (module, one-line help). Modules are imported lazily: `vlm-sft data validate`
# must not pay for importing torch-heavy training code.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vlm_sft.cli.train", "Train an adapter from a recipe (same as scripts/sft_vlm.py)."),
    "quickstart": ("vlm_sft.cli.quickstart", "Build the tiny model and digits, train, evaluate base vs adapter."),
    "data": ("vlm_sft.cli.data", "Validate, describe or draft conversation data (validate | stats | init)."),
    "push": ("vlm_sft.cli.hub", "Push a run's adapter, processor and model card to the Hub."),
    "infer": ("vlm_sft.cli.hub", "Ask an adapter about an image (--prompt, stdin, --chat), or a JSONL of questions."),
    "merge": ("vlm_sft.cli.hub", "Merge an adapter into its 16-bit base, checked; save model, processor and card."),
    "export": ("vlm_sft.cli.export", "Export for vLLM: base with the projector merged in + language-model LoRA."),
    "sweep": ("vlm_sft.cli.sweep", "Train one run per grid point of a sweep file, then compare loss and eval score."),
    "eval": ("vlm_sft.cli.eval", "Score base model vs adapters by generation on held-out data; write a report."),
    "estimate": ("vlm_sft.cli.estimate", "Estimate training memory for a model and recipe."),
    "curve": ("vlm_sft.cli.curve", "Score against amount of training data: nested subsets, one run per point."),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: vlm-sft eval: argument --batch-size: ...`) instead of the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="vlm-sft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"did you mean `vlm-sft {close[0]}`? " if close else ""
        names = ", ".join(COMMANDS)
        print(f"error: unknown command {argv[0]!r}; {hint}the commands are: {names}.", file=sys.stderr)
        return 2
    module, args = parse_command(argv)
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # `vlm-sft data validate big.json | head -1`: the reader left, so stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        return 1


def parse_command(argv: list[str]) -> tuple[object, argparse.Namespace]:
    """(the subcommand's module, its parsed arguments) for `argv` = [COMMAND, ...]; exits 2 on usage errors."""
    module = importlib.import_module(COMMANDS[argv[0]][0])
    cmd_parser = ArgumentParser(prog=f"vlm-sft {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(cmd_parser)
    tokens = recipe_key_spelling(argv[1:], cmd_parser)
    if not getattr(module, "TAKES_RECIPE_KEYS", False):
        return module, cmd_parser.parse_args(tokens)
    args, extra = cmd_parser.parse_known_args(tokens)
    args.recipe_keys = extra  # validated by the command (vlm_sft.training.recipe.parse_key_values)
    return module, args


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of the parser and of its sub-parsers (`vlm-sft data validate ...`)."""
    found = set()
    for action in parser._actions:  # argparse keeps no public list of its options
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= _option_strings(child)
    return found


def recipe_key_spelling(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--image_dir` (as recipes spell keys) -> `--image-dir` where the command defines only the dashed option."""
    known = _option_strings(parser)
    out = []
    for token in tokens:
        name, sep, value = token.partition("=")
        dashed = name.replace("_", "-")
        if name.startswith("--") and name not in known and dashed in known:
            token = dashed + sep + value
        out.append(token)
    return out
