"""Did I break it? Drift of an adapter's answers from the base model's on prompts outside the training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlm_sft.evaluation.probe import DEFAULT_QUESTIONS, ProbeError, default_probe, drift, load_probe


def test_drift_counts_changed_answers_and_their_overlap_with_the_base():
    assert drift(["a cat", "two"], ["a cat", "two"]) == {"n": 2, "changed": 0.0, "token_f1_to_base": 1.0}
    moved = drift(["a black cat", "two", "red"], ["a cat", "Two.", "blue"])
    assert moved["changed"] == pytest.approx(2 / 3)
    assert moved["token_f1_to_base"] == pytest.approx((0.8 + 1.0 + 0.0) / 3)


def test_default_probe_asks_generic_questions_about_the_eval_images():
    image = Image.new("RGB", (8, 8))
    system = {"role": "system", "content": [{"type": "text", "text": "Answer with one digit."}]}
    rows = [
        {"messages": [system, {"role": "user", "content": []}], "images": [image]},
        {"messages": [{"role": "user", "content": []}], "images": []},  # text-only rows are skipped
    ]
    probe = default_probe(rows)
    assert len(probe) == len(DEFAULT_QUESTIONS)
    assert [r["messages"][1]["content"][-1]["text"] for r in probe] == list(DEFAULT_QUESTIONS)
    assert all(r["messages"][0] == system and r["images"] == [image] for r in probe)  # as training saw it
    assert probe[0]["messages"][1]["content"][0] == {"type": "image"}


def test_probe_file_records_and_their_errors(tmp_path: Path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    good = tmp_path / "probe.jsonl"
    good.write_text('{"question": "What is this?", "image": "red.png"}\n{"question": "Say hello."}\n')
    rows = load_probe(good, system_prompt="Be brief.")
    assert [len(r["images"]) for r in rows] == [1, 0] and rows[0]["messages"][0]["role"] == "system"
    bad = tmp_path / "bad.json"
    for text, message in (
        ('[{"prompt": "x"}]', 'record 1 has no "question"'),
        ('[{"question": "x", "image": "missing.png"}]', "record 1: cannot open image"),
        ("{not json", "not JSON or JSONL"),
        ("[]", "no probe questions"),
    ):
        bad.write_text(text)
        with pytest.raises(ProbeError, match=message):
            load_probe(bad)
    with pytest.raises(ProbeError, match="cannot read"):
        load_probe(tmp_path / "nope.json")


def test_eval_reports_drift_in_the_same_report(tiny_llava, digits, tmp_path, capsys):
    """A perturbed adapter on the tiny LLaVA: the default probe, base and adapter answers, drift in json and md."""
    from tiny_adapter import make_tiny_adapter

    from vlm_sft.cli import main

    adapter = make_tiny_adapter(tiny_llava, tmp_path / "adapter")
    out = tmp_path / "report"
    argv = ["eval", str(adapter), "--eval-file", str(digits["eval"]), "--image-dir", str(digits["image_dir"])]
    argv += ["--limit", "3", "--max-new-tokens", "6", "--out", str(out), "--probe-file", "default"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "eval_report.json").read_text())
    probe = report["probe"]
    assert probe["n"] == 3 * len(DEFAULT_QUESTIONS) == len(probe["examples"])
    answers = [e["answers"] for e in probe["examples"]]
    expected = drift([a["base"] for a in answers], [a["adapter"] for a in answers])
    assert probe["drift"]["adapter"] == expected
    md = (out / "eval_report.md").read_text()
    row = f"| adapter | {expected['changed']:.3f} | {expected['token_f1_to_base']:.3f} |"
    assert md.rstrip().endswith(row) and row in stdout

    argv = ["eval", "--base", str(tiny_llava), "--eval-file", str(digits["eval"]), "--image-dir"]
    argv += [str(digits["image_dir"]), "--probe-file", "default", "--limit", "1", "--out", str(tmp_path / "r2")]
    assert main(argv) == 1
    assert "give at least one adapter" in capsys.readouterr().err
