"""The package's shape: no import cycles, no private names shared across modules, short modules, a light public
`__init__`, and a command line that names what it did not understand."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

import vlm_sft
from vlm_sft.cli import COMMANDS, main, parse_command

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vlm_sft"
MAX_LINES = 450
# Over MAX_LINES for now, and why: the memory estimator is split by concern (shapes, terms, report) in its rewrite.
KNOWN_LONG = {"vlm_sft/modeling/memory.py"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    return {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
    }


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every import in the file, function-level ones included."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, "", node.lineno) if full in modules else (base, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
    return [(target, what, line) for target, what, line in found if target in modules and target != name]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {target for target, _, _ in _imports(name, path, modules)} for name, path in modules.items()}


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_import_graph_has_no_cycle():
    graph = _graph()
    # The package __init__ re-exports its children lazily: an edge from `vlm_sft` down is not a design cycle.
    graph = {name: targets for name, targets in graph.items() if name != "vlm_sft"}
    cycles = [c for name in graph if (c := _cycle_from(name, graph))]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path):
    """The two checks above and below, on code that has what they look for (a lazy import counts)."""
    assert _cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": set()}) is None
    x = tmp_path / "x.py"
    x.write_text("def f():\n    from vlm_sft.y import _helper, public\n    from . import z\n")
    modules = {"vlm_sft.x": x, "vlm_sft.y": tmp_path / "y.py", "vlm_sft.z": tmp_path / "z.py"}
    found = _imports("vlm_sft.x", x, modules)
    assert found == [("vlm_sft.y", "_helper", 2), ("vlm_sft.y", "public", 2), ("vlm_sft.z", "", 3)]


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    private = [
        f"{path.relative_to(REPO)}:{line}: from {target} import {what}"
        for name, path in modules.items()
        for target, what, line in _imports(name, path, modules)
        if what.startswith("_") and not what.startswith("__")
    ]
    assert not private, "make these public where they are shared:\n" + "\n".join(private)


def test_modules_are_short():
    long = {
        str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := p.read_text().count("\n")) > MAX_LINES
    }
    assert set(long) <= KNOWN_LONG, long
    subpackages = {p.parent.name for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    assert {"data", "modeling", "training", "evaluation", "hub", "cli", "quickstart"} <= subpackages


def test_public_names_are_exported_and_imported_lazily():
    code = "import sys, vlm_sft; print(sorted({'torch', 'transformers', 'trl', 'datasets'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
    from vlm_sft import VisionSFTCollator, load_splits, train

    assert (VisionSFTCollator.__module__, load_splits.__module__, train.__module__) == (
        "vlm_sft.collator", "vlm_sft.data.loading", "vlm_sft.training.train",
    )  # fmt: skip
    assert {"VisionSFTCollator", "load_splits", "train"} <= set(vlm_sft.__all__)
    assert all(getattr(vlm_sft, name) is not None for name in vlm_sft.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vlm_sft.nope  # noqa: B018


def test_templates_ship_with_the_package():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["vlm_sft"].replace("\n", ",").split(",") if p]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern)}
    templates = set((PACKAGE / "hub" / "templates").glob("*.md"))
    assert templates and templates <= shipped


def test_unknown_command_names_the_word(capsys):
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'bogus'") and all(name in err for name in COMMANDS)
    assert main([]) == 0 and "sweep" in capsys.readouterr().out


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name
        assert f"usage: vlm-sft {name}" in capsys.readouterr().out


def test_options_take_the_recipe_key_spelling():
    """`--image_dir` as in a recipe or `--image-dir`: the same option, in every command (sub-commands included)."""
    for spelling in (["--eval_file", "e.json", "--image_dir=imgs"], ["--eval-file", "e.json", "--image-dir", "imgs"]):
        args = parse_command(["eval", *spelling, "--max_new_tokens", "4", "run1"])[1]
        assert (args.eval_file, args.image_dir, args.max_new_tokens, args.adapters) == ("e.json", "imgs", 4, ["run1"])
    assert parse_command(["data", "validate", "x.json", "--max_length", "5"])[1].max_length == 5
    estimate = parse_command(["estimate", "tiny", "--lora_r", "8", "--no-load_in_4bit"])[1]
    assert (estimate.lora_r, estimate.load_in_4bit) == (8, False)
    # The recipe keys `vlm-sft train` passes on to the recipe parser are left as they are.
    assert parse_command(["train", "r.yaml", "--max_new_tokens", "4"])[1].overrides == ["--max_new_tokens", "4"]
