"""`vlm-sft eval` and the quickstart's report: generation, scoring, and report files that agree with each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlm_sft.cli import main
from vlm_sft.evaluation import generate as evaluate
from vlm_sft.evaluation.generate import AdapterSpec, format_table, table_rows
from vlm_sft.evaluation.metrics import aggregate, score_example
from vlm_sft.evaluation.plots import loss_curves, plot_eval_report

REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *argv) -> tuple[int, str]:
    code = main(["eval", *map(str, argv)])
    return code, capsys.readouterr().out


def md_table(markdown: str) -> dict[str, list[str]]:
    """The first markdown table in the text: {first cell: other cells}."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
        elif rows and not line.startswith("|"):
            break
    return rows


def assert_files_agree(out: Path) -> dict:
    """eval_report.md's table and eval_report.png's bars show exactly eval_report.json's numbers."""
    report = json.loads((out / "eval_report.json").read_text())
    md = (out / "eval_report.md").read_text()
    table = md_table(md)
    assert format_table(report) in md
    has_base = report["models"][0]["kind"] == "base"
    for label, values in table_rows(report):
        cells = table[label]
        shown = cells[:1] + cells[1::2] if has_base else cells  # skip the "Δ vs base" columns
        for value, cell, m in zip(values, shown, report["models"], strict=True):
            point, _, interval = cell.partition(" [")  # each number carries its 95 % interval
            assert point == ("-" if value is None else f"{value:.2f}" if "MAE" in label else f"{value:.3f}"), label
            assert bool(interval) == (value is not None and m["intervals"][label] is not None), (label, cell)
    for label, per_model in plot_eval_report(report, out / "redrawn.png").items():  # what the picture shows
        for name, value in per_model.items():
            assert value == table_rows_value(report, label, name), (label, name)
    with Image.open(out / "eval_report.png") as png:
        assert png.format == "PNG" and png.width > 400
    # every per-example score can be recomputed from the answers, and the summaries from those
    for m in report["models"]:
        per_example = [e["scores"][m["name"]] for e in report["examples"]]
        for e, s in zip(report["examples"], per_example, strict=True):
            recomputed = score_example(e["answers"][m["name"]], e["reference"], tolerance=report["numeric_tolerance"])
            assert s == json.loads(json.dumps(recomputed)), e["index"]
        assert m["metrics"] == json.loads(json.dumps(aggregate(per_example)))
    return report


def table_rows_value(report: dict, label: str, name: str) -> float | None:
    names = [m["name"] for m in report["models"]]
    return dict(table_rows(report))[label][names.index(name)]


# ---------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("spec", "path", "revision", "name"),
    [
        ("outputs/quickstart", "outputs/quickstart", None, "quickstart"),
        ("outputs/quickstart/", "outputs/quickstart/", None, "quickstart"),
        ("me/llava-lora@v2", "me/llava-lora", "v2", "llava-lora"),
        ("tuned=me/llava-lora@3f2a1bc", "me/llava-lora", "3f2a1bc", "tuned"),
        ("r16=outputs/sweep/r16-qv", "outputs/sweep/r16-qv", None, "r16"),
    ],
)
def test_adapter_spec_parse(spec, path, revision, name):
    assert AdapterSpec.parse(spec) == AdapterSpec(path, revision, name)


# ---------------------------------------------------------------------------------------------- a JSON / numeric set


def _png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)


def _workbench_set(folder: Path) -> Path:
    """Messages-format JSONL with JSON, numeric and free-text answers, one image each."""
    qa = [
        ("gripper_1.png", "Report the gripper state as JSON.", '{"gripper": "closed", "holding_object": false}'),
        ("gripper_2.png", "Report the gripper state as JSON.", '{"gripper": "open", "holding_object": true}'),
        ("tray.png", "How many screws are in the tray?", "4"),
        ("gauge.png", "What does the pressure gauge read?", "30 psi"),
        ("iron.png", "Is the soldering iron on?", "Yes, the LED is green."),
    ]
    lines = []
    for i, (image, question, answer) in enumerate(qa):
        _png(folder / "images" / image, (40 * i, 90, 200 - 30 * i))
        user = [{"type": "image", "image": f"images/{image}"}, {"type": "text", "text": question}]
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}))
    path = folder / "eval.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


CRAFTED = {
    "base": ["not json", "gripper: open", "many", "20", "no"],
    "tuned": ['{"gripper": "closed", "holding_object": false}', '{"gripper": "closed"}', "4", "34 psi", "Yes"],
}


def test_report_on_json_and_numeric_answers(tmp_path, capsys, monkeypatch):
    """Known answers in, hand-computed metrics out: the CLI, the scoring and all three report files."""
    eval_file = _workbench_set(tmp_path / "data")
    adapter = tmp_path / "adapters" / "tuned"
    adapter.mkdir(parents=True)

    class Processor:
        chat_template = "{{ messages }}"

    monkeypatch.setattr(evaluate, "_load_processor", lambda path, revision: Processor())
    monkeypatch.setattr(evaluate, "resolve_adapter", lambda path, revision=None: Path(path))
    monkeypatch.setattr(evaluate, "_load", lambda base, rev, folder, device, dtype: folder.name if folder else "base")
    seen: dict[str, dict] = {}

    def fake_generate(model, processor, rows, **kwargs):
        seen[model] = kwargs
        assert [r["messages"][-1]["role"] for r in rows] == ["assistant"] * 5  # the reply is cut off later
        return CRAFTED[model]

    monkeypatch.setattr(evaluate, "generate_answers", fake_generate)
    out = tmp_path / "report"
    code, stdout = cli(capsys, adapter, "--base", "some/base", "--eval-file", eval_file, "--out", out, "--worst", "3")
    assert code == 0
    assert seen["tuned"]["max_new_tokens"] == 64 and seen["tuned"]["do_sample"] is False  # greedy by default
    assert seen["tuned"]["desc"] == "tuned"  # the progress bar is labelled with the model

    report = assert_files_agree(out)
    assert format_table(report) in stdout  # the printed table is the report's
    base, tuned = (m["metrics"] for m in report["models"])
    assert tuned["kinds"] == {"json": 2, "numeric": 2, "text": 1}
    assert tuned["exact_match"] == pytest.approx(2 / 5)  # the first JSON answer and "4"
    assert tuned["json"]["valid_rate"] == 1.0 and base["json"]["valid_rate"] == 0.0
    assert tuned["json"]["field_accuracy"] == pytest.approx(2 / 4)
    assert tuned["json"]["per_field"] == {"gripper": 0.5, "holding_object": 0.5}
    assert tuned["numeric"] == {"n": 2, "accuracy": 0.5, "mae": 2.0, "parsed_rate": 1.0}
    # "many" has no number and "20" no unit for "30 psi": neither is comparable, so no MAE
    assert base["numeric"] == {"n": 2, "accuracy": 0.0, "mae": None, "parsed_rate": 0.0}

    # Worst: lowest score first; among the zeros, where the adapter fell furthest below the base.
    assert report["worst"] == {"tuned": [1, 3, 4]}
    md = (out / "eval_report.md").read_text()
    worst = md.split("## Worst examples: tuned", 1)[1]
    first = next(line for line in worst.splitlines() if line.startswith("| 1 "))
    assert "gripper_2.png" in first and "gripper: open" in first and '{"gripper": "closed"}' in first
    assert [e["images"] for e in report["examples"]][2] == ["tray.png"]
    # How it scored, and how sure: settings, then an interval per number and per difference to base.
    assert "- generation: greedy, max_new_tokens=64, batch size 16, seed 0" in md
    assert "- system prompt: none" in md and "first number equals the reference's, in the same unit" in md
    assert "95% percentile bootstrap over the 5 examples (2000 resamples, seed 0)" in md
    low, high = report["models"][1]["intervals"]["exact match"]
    assert 0.0 <= low < 0.4 < high <= 1.0  # 2 of 5 right: the interval is wide
    exact_row = md_table(md)["exact match"]
    assert exact_row[2].startswith("+0.400 [+") and exact_row[0] == "0.000 [0.000, 0.000]"

    # With a tolerance, "34 psi" for "30 psi" is right: it is no longer a worst example, and the report says why.
    out = tmp_path / "tolerant"
    code, _ = cli(capsys, adapter, "--base", "b", "--eval-file", eval_file, "--out", out, "--numeric-tolerance", 4)
    report = assert_files_agree(out)
    assert code == 0 and report["worst"] == {"tuned": [1, 4]}  # only examples that lost points
    assert "within ±4 (absolute) of the reference's" in (out / "eval_report.md").read_text()

    # Adapters only, sampled: no base column, no deltas, the sampling settings reach generate and the report.
    out = tmp_path / "no_base"
    seen.clear()
    code, _ = cli(
        capsys, f"t={adapter}", "--base", "b", "--eval-file", eval_file, "--out", out, "--no-base",
        "--do-sample", "--temperature", "0.7",
    )  # fmt: skip
    assert code == 0 and seen["tuned"]["do_sample"] and seen["tuned"]["temperature"] == 0.7 and "base" not in seen
    report = assert_files_agree(out)
    assert [m["name"] for m in report["models"]] == ["t"] and "Δ" not in (out / "eval_report.md").read_text()
    assert "sampling (T=0.7" in (out / "eval_report.md").read_text()


# ---------------------------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def trained(tiny_llava, digits, tmp_path_factory) -> dict:
    """A briefly trained quickstart adapter (a digits subset, an eval loss every few steps) and its recipe."""
    from vlm_sft.training.train import parse_recipe, train

    root = tmp_path_factory.mktemp("eval_quickstart")
    train_file, eval_file = root / "train.json", root / "eval.json"
    train_file.write_text(json.dumps(json.loads(digits["train"].read_text())[:320]))
    eval_file.write_text(json.dumps(json.loads(digits["eval"].read_text())[:32]))
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    recipe.update(
        model_name_or_path=str(tiny_llava),
        train_file=str(train_file),
        eval_file=str(eval_file),
        image_dir=str(digits["image_dir"]),
        output_dir=str(root / "out"),
    )
    overrides = {"max_steps": 30, "logging_steps": 5, "eval_strategy": "steps", "eval_steps": 15}
    overrides |= {"per_device_eval_batch_size": 32, "disable_tqdm": True}
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    train(*parse_recipe([str(recipe_file), *[str(x) for kv in overrides.items() for x in ("--" + kv[0], kv[1])]]))
    return {"recipe": recipe, "recipe_file": recipe_file, "out": root / "out"}


def test_training_writes_loss_png_with_train_and_eval_loss(trained):
    state = json.loads((trained["out"] / "trainer_state.json").read_text())
    curves = loss_curves(state["log_history"])
    assert [s for s, _ in curves["train"]] == [5, 10, 15, 20, 25, 30] and [s for s, _ in curves["eval"]] == [15, 30]
    with Image.open(trained["out"] / "loss.png") as png:
        assert png.format == "PNG"


def test_quickstart_numbers_come_from_the_eval_report(trained, capsys):
    from vlm_sft.quickstart.pipeline import report
    from vlm_sft.training.recipe import load_recipe

    line = report(load_recipe(trained["recipe_file"]), limit=None, batch_size=32)
    match = re.fullmatch(r"quickstart: base_accuracy=(\d\.\d\d) finetuned_accuracy=(\d\.\d\d) train_seconds=\d+", line)
    assert match, line
    result = assert_files_agree(trained["out"] / "eval")
    accuracy = {m["name"]: m["metrics"]["exact_match"] for m in result["models"]}
    assert (match[1], match[2]) == (f"{accuracy['base']:.2f}", f"{accuracy['fine-tuned']:.2f}")
    assert result["n"] == 32 and result["generation"]["max_new_tokens"] == 4
    # 30 steps are enough to learn the answer's form (a digit, then stop); the untrained base rambles
    tuned = result["models"][1]["metrics"]["numeric"]
    assert tuned["parsed_rate"] == 1.0 > result["models"][0]["metrics"]["numeric"]["parsed_rate"]
    assert accuracy["fine-tuned"] > accuracy["base"]


def test_eval_cli_on_a_json_and_numeric_set_with_the_real_model(trained, tmp_path, capsys):
    """Real generation (batched, left-padded) on the workbench-style set: batch size does not change answers."""
    eval_file = _workbench_set(tmp_path / "data")
    outs = {}
    for batch_size in (1, 5):
        out = tmp_path / f"b{batch_size}"
        code, stdout = cli(
            capsys, f"qs={trained['out']}", "--eval-file", eval_file, "--batch-size", batch_size,
            "--max-new-tokens", 12, "--out", out,
        )  # fmt: skip
        assert code == 0, stdout
        outs[batch_size] = assert_files_agree(out)
    assert outs[1]["base_model"] == trained["recipe"]["model_name_or_path"]  # read from adapter_config.json
    answers = [[e["answers"] for e in outs[b]["examples"]] for b in (1, 5)]
    assert answers[0] == answers[1], "left padding: a row's answer does not depend on its batch"
    assert outs[5]["models"][1]["metrics"]["kinds"] == {"json": 2, "numeric": 2, "text": 1}


def test_eval_cli_recipe_with_eval_fraction_scores_the_rows_training_held_out(trained, tmp_path, capsys):
    """No eval_file: `--recipe` evaluates the seeded eval_fraction split, system prompt included, as training."""
    import shutil

    from vlm_sft.data.loading import load_splits
    from vlm_sft.evaluation.generate import _image_names
    from vlm_sft.training.recipe import load_recipe, recipe_eval_set

    recipe = {k: v for k, v in trained["recipe"].items() if k != "eval_file"}
    recipe.update(eval_fraction=0.05, system_prompt="Answer with one digit.", output_dir=str(trained["out"]))
    recipe_file = tmp_path / "fraction.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    # The run held out its eval_file (recorded in eval_split.json): a recipe with another split is refused.
    code = main(["eval", "--recipe", str(recipe_file), "--out", str(tmp_path / "refused")])
    assert code == 1 and "eval_fraction: recipe 0.05, run None" in capsys.readouterr().err
    # A run without a record (trained before records existed): the recipe's split is rebuilt, as training builds it.
    old_run = tmp_path / "old_run"
    shutil.copytree(trained["out"], old_run, ignore=shutil.ignore_patterns("eval_split.json"))
    recipe["output_dir"] = str(old_run)
    recipe_file.write_text(yaml.safe_dump(recipe))
    _, training_args, _, vision = load_recipe(recipe_file)
    held_out = load_splits(vision, seed=training_args.seed)[1]  # what train() evaluates on
    assert held_out is not None and len(held_out) == 16

    eval_set = recipe_eval_set(load_recipe(recipe_file))
    assert [r["messages"] for r in eval_set.rows] == held_out["messages"]
    assert all(r["messages"][0]["role"] == "system" for r in eval_set.rows)

    code, stdout = cli(capsys, "--recipe", recipe_file, "--max-new-tokens", 4, "--out", tmp_path / "out")
    assert code == 0, stdout
    report = assert_files_agree(tmp_path / "out")
    assert report["n"] == 16 and "eval_fraction=0.05" in report["eval_file"]
    assert [e["images"] for e in report["examples"]] == _image_names(held_out, len(held_out))
    assert [e["reference"] for e in report["examples"]] == eval_set.references
    assert [m["name"] for m in report["models"]] == ["base", "old_run"]
    assert "holds no record" in report["eval_set_note"]


def test_eval_cli_refuses_what_it_cannot_do(tmp_path, capsys):
    assert cli(capsys, "--base", "x")[0] == 2  # no eval set
    missing = tmp_path / "nope.json"
    code = main(["eval", "--base", "x", "--eval-file", str(missing)])
    assert code == 1 and "nope.json" in capsys.readouterr().err


def test_base_without_chat_template_is_prompted_with_the_adapters_processor(tmp_path, monkeypatch):
    class Processor:
        def __init__(self, template: str | None) -> None:
            self.chat_template = template

    processors = {"plain/base": Processor(None), "a1": Processor("{{ one }}"), "a2": None}  # a2 saved none
    monkeypatch.setattr(evaluate, "_load_processor", lambda path, revision: processors[path])
    monkeypatch.setattr(evaluate, "resolve_adapter", lambda path, revision=None: Path(path))
    monkeypatch.setattr(evaluate, "_load", lambda base, rev, folder, device, dtype: folder.name if folder else "base")
    used = {}

    def fake_generate(model, processor, rows, **kwargs):
        used[model] = processor
        return ["x"] * len(rows)

    monkeypatch.setattr(evaluate, "generate_answers", fake_generate)
    eval_set = evaluate.load_eval_set(_workbench_set(tmp_path))
    evaluate.evaluate_models(eval_set, [AdapterSpec("a1"), AdapterSpec("a2")], base="plain/base", progress=False)
    assert used == {"base": processors["a1"], "a1": processors["a1"], "a2": processors["a1"]}


def test_generate_answers_nests_images_per_sample_like_the_collator():
    import torch

    seen = {}

    class Inputs(dict):
        def to(self, device):
            return self

    class Tokenizer:
        bos_token, pad_token_id = None, 0

    class Processor:
        tokenizer = Tokenizer()

        def apply_chat_template(self, prompts, **kwargs):
            return ["q"] * len(prompts)

        def __call__(self, text, images, **kwargs):
            seen.setdefault("images", []).append(images)
            return Inputs(input_ids=torch.zeros(len(text), 2, dtype=torch.long))

        def batch_decode(self, tokens, **kwargs):
            return ["a"] * len(tokens)

    class Model:
        device = "cpu"

        def eval(self):
            return self

        def generate(self, input_ids, **kwargs):
            return torch.zeros(input_ids.shape[0], 3, dtype=torch.long)

    def row(images):
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        return {"messages": messages, "images": images}

    rows = [row(["img1"]), row([]), row(None), row(["img2", "img3"]), row([])]
    answers = evaluate.generate_answers(Model(), Processor(), rows, batch_size=3)
    assert answers == ["a"] * 5
    assert seen["images"] == [[["img1"], [], []], [["img2", "img3"], []]]
    seen.clear()
    evaluate.generate_answers(Model(), Processor(), rows[1:3], batch_size=3)
    assert seen["images"] == [None]  # a text-only batch has no images at all


def test_quickstart_refuses_a_missing_recipe(tmp_path, capsys):
    code = main(["quickstart", "report", "--recipe", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot read the recipe") and "nope.yaml" in err


def test_adapter_spec_an_existing_path_wins_over_name_equals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wd=0.1").mkdir()
    assert AdapterSpec.parse("wd=0.1") == AdapterSpec("wd=0.1", None, "wd=0.1")
    assert AdapterSpec.parse("wd=0.2") == AdapterSpec("0.2", None, "wd")  # no such folder: NAME=PATH
