"""`vlm-sft curve`: nested seeded subsets, bootstrap intervals, the plan, resumable points, and a real small curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlm_sft.evaluation.curve import CurvePlan, format_plan, last_gain, nested_subsets, summarize
from vlm_sft.evaluation.intervals import bootstrap_interval, paired_difference

REPO = Path(__file__).resolve().parents[1]


def test_subsets_are_nested_seeded_and_sized():
    subsets = nested_subsets(1000, [0.1, 0.25, 1.0], seed=3)
    assert [len(subsets[f]) for f in (0.1, 0.25, 1.0)] == [100, 250, 1000]
    assert set(subsets[0.1]) < set(subsets[0.25]) < set(subsets[1.0])
    assert subsets == nested_subsets(1000, [0.1, 0.25, 1.0], seed=3)
    assert subsets[0.1] != nested_subsets(1000, [0.1], seed=4)[0.1]
    assert len(nested_subsets(3, [0.01], seed=0)[0.01]) == 1  # never an empty training set


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_examples():
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 500
    low, high = bootstrap_interval(small)
    assert low < 0.5 < high and bootstrap_interval(small) == (low, high)  # seeded
    low_l, high_l = bootstrap_interval(large)
    assert high_l - low_l < (high - low) / 3
    assert bootstrap_interval([1.0] * 20) == (1.0, 1.0)


def test_paired_difference_sees_a_consistent_gain_that_unpaired_spread_would_hide():
    before = [0.0] * 50 + [1.0] * 50
    after = [0.0] * 40 + [1.0] * 60  # ten examples fixed, none broken
    gain, low, high = paired_difference(after, before)
    assert gain == pytest.approx(0.1) and 0 < low <= gain <= high
    with pytest.raises(ValueError, match="one value per example"):
        paired_difference([1.0], [1.0, 0.0])


def _point(fraction, examples, seed, values):
    return {"fraction": fraction, "examples": examples, "seed": seed, "per_example": values,
            "score": sum(values) / len(values)}  # fmt: skip


def test_summary_averages_seeds_and_the_sentence_reports_the_last_gain():
    points = [
        _point(0.5, 50, 0, [1.0, 0.0, 0.0, 0.0]), _point(0.5, 50, 1, [1.0, 1.0, 0.0, 0.0]),
        _point(1.0, 100, 0, [1.0, 1.0, 1.0, 0.0]), _point(1.0, 100, 1, [1.0, 1.0, 1.0, 1.0]),
    ]  # fmt: skip
    rows = summarize(points)
    assert [(r["examples"], r["score"], r["seed_min"], r["seed_max"]) for r in rows] == [
        (50, 0.375, 0.25, 0.5), (100, 0.875, 0.75, 1.0),
    ]  # fmt: skip
    assert rows[0]["per_example"] == [1.0, 0.5, 0.0, 0.0]
    gain = last_gain(rows, "exact_match")
    assert gain["gain"] == pytest.approx(0.5)
    assert gain["sentence"].startswith("Doubling the data (50 -> 100 examples) changed exact_match by +0.500 (95 %")
    assert last_gain(rows[:1], "exact_match") is None
    rows[0]["examples"] = 25
    assert last_gain(rows, "exact_match")["sentence"].startswith("Going from 25 to 100 examples (x4, 2 doublings)")


def test_plan_lists_every_point_and_what_is_done():
    points = [{"name": "f0.5-s42", "examples": 10, "steps": 4}, {"name": "f1-s42", "examples": 20, "steps": 8}]
    text = format_plan(points, {"f0.5-s42"}, seconds_per_step=0.5)
    assert text.splitlines()[0] == "curve plan: 2 points, 1 to train (1 finished), 8 optimizer steps in all"
    assert "f0.5-s42: 10 examples, 4 steps (done)" in text and "about 4 s of training" in text
    assert "estimated after the first run" in format_plan(points, set(), None)


def test_bad_arguments_exit_2(capsys):
    from vlm_sft.cli import main

    assert main(["curve", "r.yaml", "--fractions", "0,1"]) == 2
    assert "error: --fractions must be numbers in (0, 1]" in capsys.readouterr().err
    assert main(["curve", str(REPO / "recipes" / "quickstart.yaml"), "--set", "lora_rank=4"]) == 2
    assert "lora_rank" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--seeds"):
        CurvePlan("r.yaml", [1.0], seeds=0)


def test_small_curve_rises_writes_three_files_and_resumes(tiny_llava, digits, tmp_path, capsys):
    """A reduced quickstart curve: 0.25 and 1.0 of 320 digits; more data scores higher; a rerun trains nothing."""
    from vlm_sft.cli import main

    train_file, eval_file = tmp_path / "train.json", tmp_path / "eval.json"
    train_file.write_text(json.dumps(json.loads(digits["train"].read_text())[:320]))
    eval_file.write_text(json.dumps(json.loads(digits["eval"].read_text())[:48]))
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    recipe.update(
        model_name_or_path=str(tiny_llava), train_file=str(train_file), eval_file=str(eval_file),
        image_dir=str(digits["image_dir"]), num_train_epochs=4, disable_tqdm=True,
    )  # fmt: skip
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "curve"
    argv = ["curve", str(recipe_file), "--fractions", "0.25,1.0", "--seeds", "1", "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "4"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("curve plan: 2 points, 2 to train (0 finished), 100 optimizer steps in all")
    result = json.loads((out / "curve.json").read_text())
    points = {p["fraction"]: p for p in result["points"]}
    assert (points[0.25]["examples"], points[1.0]["examples"]) == (80, 320)
    assert points[1.0]["score"] > points[0.25]["score"] > result["base"]["score"]
    for p in points.values():
        assert p["low"] <= p["score"] <= p["high"] and "per_example" not in p
        assert json.loads((Path(p["output_dir"]) / "trainer_state.json").read_text())["global_step"] == p["steps"]
    md = (out / "curve.md").read_text()
    assert result["gain"]["sentence"] in md and result["gain"]["sentence"] in stdout
    assert f"| 1 | 320 | {points[1.0]['score']:.3f} |" in md
    with Image.open(out / "curve.png") as png:
        assert png.format == "PNG"

    assert main([*argv, "--max-new-tokens", "4"]) == 0  # resumed: both points finished, nothing retrained
    again = capsys.readouterr().out
    assert "2 points, 0 to train (2 finished)" in again
    assert json.loads((out / "curve.json").read_text())["points"] == result["points"]

    assert main([*argv, "--max-new-tokens", "4", "--limit", "24"]) == 0  # another scoring: rescored, not retrained
    assert "0 to train (2 finished)" in capsys.readouterr().out
    rescored = json.loads((out / "curve.json").read_text())
    assert rescored["eval_n"] == 24 and all(p["scoring"]["limit"] == 24 for p in rescored["points"])
    assert [p["train_seconds"] for p in rescored["points"]] == [p["train_seconds"] for p in result["points"]]
