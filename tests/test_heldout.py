"""The eval split a run held out is recorded by training and is exactly what `vlm-sft eval` scores afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlm_sft.cli import main
from vlm_sft.training.heldout import SPLIT_FILE

REPO = Path(__file__).resolve().parents[1]
LONG = " Look carefully at the picture, the strokes, the loops and the corners before answering." * 6


@pytest.fixture(scope="module")
def run(tiny_llava, digits, tmp_path_factory) -> dict:
    """Two training steps with eval_fraction in the recipe, --seed 7 on the command line, and too_long: drop
    over a set where some questions are too long: the split training holds out differs from the recipe's."""
    from vlm_sft.training.train import parse_recipe, train

    root = tmp_path_factory.mktemp("heldout")
    records = json.loads(digits["train"].read_text())[:60]
    for i in range(0, 60, 5):  # every fifth question too long for max_length
        records[i]["conversations"][0]["value"] += LONG
    train_file = root / "train.json"
    train_file.write_text(json.dumps(records))
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    del recipe["eval_file"]
    recipe.update(
        model_name_or_path=str(tiny_llava),
        train_file=str(train_file),
        eval_fraction=0.25,
        image_dir=str(digits["image_dir"]),
        output_dir=str(root / "out"),
        max_length=80,
        too_long="drop",
        max_steps=2,
        per_device_train_batch_size=4,
        disable_tqdm=True,
    )
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    train(*parse_recipe([str(recipe_file), "--seed", "7"]))
    return {"recipe_file": recipe_file, "out": root / "out", "root": root}


def _held_out_by_training(run: dict):
    """The eval rows train() scored (its own split code, with the run's seed, after the length policy)."""
    from vlm_sft.training.recipe import load_recipe
    from vlm_sft.training.train import _setup_data

    script_args, training_args, model_args, vision = load_recipe(run["recipe_file"], ["--seed", "7"])
    return _setup_data(script_args, training_args, model_args, vision)[1]


def test_training_records_the_split_it_held_out(run):
    record = json.loads((run["out"] / SPLIT_FILE).read_text())
    assert record["parameters"]["seed"] == 7 and record["parameters"]["eval_fraction"] == 0.25
    assert record["split_size"] == 15 and record["dropped"], "some long questions fell in the eval split"
    assert all(d["tokens"] > 80 for d in record["dropped"])
    held_out = _held_out_by_training(run)
    assert len(record["kept"]) == len(held_out) == 15 - len(record["dropped"])


def test_eval_of_the_run_scores_exactly_the_examples_it_held_out(run, capsys):
    out = run["root"] / "report"
    code = main(["eval", str(run["out"]), "--max-new-tokens", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "eval_report.json").read_text())
    held_out = _held_out_by_training(run)
    from vlm_sft.evaluation.generate import _image_names

    assert [e["images"] for e in report["examples"]] == _image_names(held_out, len(held_out))  # digit images
    assert (
        report["n"] == len(held_out)
        and "seed=7" in report["eval_file"]
        and "dropped by too_long" in report["eval_file"]
    )


def test_eval_refuses_a_recipe_that_disagrees_with_the_run(run, capsys):
    code = main(["eval", "--recipe", str(run["recipe_file"]), "--out", str(run["root"] / "refused")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "seed: recipe 42, run 7" in err and f"vlm-sft eval {run['out']}" in err
    assert not (run["root"] / "refused").exists()


def test_eval_with_an_agreeing_recipe_uses_the_record(run, tmp_path, capsys):
    recipe = yaml.safe_load(run["recipe_file"].read_text())
    recipe["seed"] = 7
    agreeing = tmp_path / "agreeing.yaml"
    agreeing.write_text(yaml.safe_dump(recipe))
    code = main(["eval", "--recipe", str(agreeing), "--max-new-tokens", "2", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr()
    report = json.loads((tmp_path / "r" / "eval_report.json").read_text())
    assert report["n"] == len(_held_out_by_training(run)) and not report["eval_set_note"]


def test_eval_refuses_when_the_data_changed_since_training(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(run["out"], copy)
    record = json.loads((copy / SPLIT_FILE).read_text())
    record["keys"][0] = "0" * 16  # as if the first held-out row had been edited
    (copy / SPLIT_FILE).write_text(json.dumps(record))
    code = main(["eval", str(copy), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"error: {copy / SPLIT_FILE}: 1 held-out rows differ") and err.count("\n") == 1


def test_without_a_record_the_report_says_the_length_policy_was_not_applied(run, tmp_path, capsys):
    """A run from before records: the recipe's split is rebuilt, and the report says what it cannot know."""
    import shutil

    copy = tmp_path / "old_run"
    shutil.copytree(run["out"], copy)
    (copy / SPLIT_FILE).unlink()
    recipe = yaml.safe_load(run["recipe_file"].read_text())
    recipe.update(seed=7, output_dir=str(copy))
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(recipe))
    code = main(["eval", "--recipe", str(old), "--max-new-tokens", "2", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr()
    report = json.loads((tmp_path / "r" / "eval_report.json").read_text())
    assert report["n"] == 15 and "were not dropped as in training" in report["eval_set_note"]
    assert "were not dropped as in training" in (tmp_path / "r" / "eval_report.md").read_text()
