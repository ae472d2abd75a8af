"""Recipe values refused before anything loads: unreadable YAML, misspelled keys, impossible numbers, tokens.

Each check raises `ValueError` with one line naming the key (or the file and line) and what to do;
`vlm_sft.training.train.main` prints it as `error: ...` and exits 2.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import yaml

from vlm_sft.hub.availability import looks_local

_FLAG = re.compile(r"--?([A-Za-z_][\w-]*)")


def check_recipe_file(path: str | Path) -> None:
    """The recipe is a readable YAML mapping; a syntax error or a `!!python/...` tag names the file and line."""
    text = Path(path).read_text(encoding="utf-8")  # OSError (missing, a folder) is reported by the caller
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"recipe {where}: {problem}. Fix the YAML there (plain `key: value` lines; tags such as "
            "!!python/... are never executed)."
        ) from None
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"recipe {path}: expected `key: value` lines (a mapping), got a {type(values).__name__}.")
    if isinstance(values, dict) and "hub_token" in values:
        raise ValueError(token_refusal(f"recipe {path}"))


def token_refusal(where: str) -> str:
    return (
        f"{where}: hub_token is not accepted (a token in a recipe or on a command line ends up in logs, shell "
        "history and error reports). Set HF_TOKEN in the environment or run `hf auth login` once, and remove "
        "hub_token."
    )


def check_command_line(argv: list[str]) -> None:
    """Refuse `--hub_token` on the command line before our code can echo it (shells and launchers still may)."""
    if any(a.split("=", 1)[0] in ("--hub_token", "--hub-token") for a in argv):
        raise ValueError(
            token_refusal("the command line")
            + " A token typed on a command line is in your shell history: consider revoking it."
        )


def raise_usage_error(message: str) -> NoReturn:
    """argparse's error without its 60-line usage dump: `invalid int value` and the like, as one line."""
    raise ValueError(message)


def known_keys(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions if a.dest != "help"]  # argparse has no public list of actions


def explain_unknown_keys(message: str, known: list[str]) -> str:
    """TRL's "Unknown arguments ... ['--learnig_rate', '1']" as: unknown key `learnig_rate`, did you mean ...?"""
    if "Unknown arguments" not in message and "not used by the HfArgumentParser" not in message:
        return message
    where = "in the recipe" if "config file" in message else "on the command line"
    listed = message[message.find("[") :]
    names = [m for m in _FLAG.findall(listed) if not m.isdigit()]
    parts = []
    for name in dict.fromkeys(names):
        key = name.replace("-", "_")
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        parts.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    if not parts:
        return message
    return (
        f"unknown recipe key {', '.join(parts)} {where}. Fix its spelling or remove it (see `--help` for every key)."
    )


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_values(training_args: Any, model_args: Any) -> None:
    """Numbers no run can use, refused before data, model or output_dir are touched."""
    problems = []
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(training_args, key, 1)
        if not isinstance(value, int) or value < 1:
            problems.append(f"{key}={value!r} must be a whole number of at least 1 (e.g. 4)")
    if not _positive(training_args.learning_rate):
        problems.append(f"learning_rate={training_args.learning_rate!r} must be above 0 (e.g. 2e-4)")
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        problems.append(f"max_steps={training_args.max_steps!r} must be -1 (use num_train_epochs) or at least 1")
    elif training_args.max_steps == -1 and not _positive(training_args.num_train_epochs):
        problems.append(
            f"num_train_epochs={training_args.num_train_epochs!r} with max_steps=-1 trains nothing: "
            "give num_train_epochs above 0 or max_steps of at least 1"
        )
    max_length = getattr(training_args, "max_length", None)
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        problems.append(f"max_length={max_length!r} must be at least 1 token, or null for no limit")
    if getattr(model_args, "use_peft", False):
        if not isinstance(model_args.lora_r, int) or model_args.lora_r < 1:
            problems.append(f"lora_r={model_args.lora_r!r} must be a whole number of at least 1 (e.g. 16)")
        if not _positive(model_args.lora_alpha):
            problems.append(f"lora_alpha={model_args.lora_alpha!r} must be above 0 (e.g. 32)")
        dropout = model_args.lora_dropout
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            problems.append(f"lora_dropout={dropout!r} must be in [0, 1) (e.g. 0.05)")
    if problems:
        raise ValueError("; ".join(problems) + ".")


def check_model_path(name: str | None) -> None:
    """A local model_name_or_path must be an existing folder (a Hub id is checked against the cache later)."""
    if not name:
        raise ValueError("model_name_or_path is not set: give a Hub id (e.g. llava-hf/llava-1.5-7b-hf) or a folder.")
    if looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        what = "is a file, not a model folder" if os.path.exists(os.path.expanduser(name)) else "does not exist"
        raise ValueError(
            f"model_name_or_path {name!r} {what} (relative paths are relative to {os.getcwd()}). "
            "Give the folder holding config.json, or a Hub id."
        )
