"""`vlm-sft infer`: batch answers from a questions file (resumable), and stdin questions alone or as a chat."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from tiny_adapter import PROMPT, digit_image, make_tiny_adapter

from vlm_sft.cli import main as cli


@pytest.fixture(scope="module")
def adapter(tiny_llava, tmp_path_factory) -> Path:
    return make_tiny_adapter(tiny_llava, tmp_path_factory.mktemp("infer") / "adapter", seed=2)


@pytest.fixture()
def questions(tmp_path) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(3):
        digit_image(tmp_path / "img" / f"{i}.png", seed=i)
    lines = [
        {"id": "a", "image": "img/0.png", "prompt": PROMPT},
        {"id": 7, "image": "img/1.png", "prompt": "Which digit?"},
        {"image": "img/2.png", "prompt": PROMPT},  # no id: the line number stands in
        {"id": "two", "images": ["img/0.png", "img/1.png"], "prompt": "Which two digits?"},
        {"id": "e", "image": "img/2.png", "prompt": "And this one?"},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_infer_answers_every_line_keeps_ids_and_resumes(adapter, questions, tmp_path, capsys):
    out = tmp_path / "a.jsonl"
    args = ["infer", "--adapter", str(adapter), "--file", str(questions), "--out", str(out)]
    args += ["--batch-size", "2", "--max-new-tokens", "4"]
    assert cli(args) == 0
    first = _answers(out)
    assert [a["id"] for a in first] == ["a", 7, 3, "two", "e"]
    assert first[3]["images"] == ["img/0.png", "img/1.png"] and first[1]["prompt"] == "Which digit?"
    assert all(isinstance(a["answer"], str) and a["answer"] for a in first)
    assert "answered 5 questions (0 already in" in capsys.readouterr().out
    # Batched answers are the single-question answers.
    image = questions.parent / "img" / "0.png"
    assert (
        cli(["infer", "--adapter", str(adapter), "--image", str(image), "--prompt", PROMPT, "--max-new-tokens", "4"])
        == 0
    )
    assert capsys.readouterr().out.strip() == first[0]["answer"]
    # A run stopped mid-write: two lines lost, a third cut off; the rerun answers only those, once each.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:15])
    assert cli(args) == 0
    assert "answered 3 questions (2 already in" in capsys.readouterr().out
    assert _answers(out) == first
    assert cli(args) == 0 and "answered 0 questions (5 already in" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "x", "image": "img/0.png"}', "line 2, field 'prompt': expected a non-empty string"),
        ('{"image": "img/missing.png", "prompt": "?"}', "line 2, field 'image': 'img/missing.png' is not a file"),
        ('{"id": "a", "image": "img/0.png", "prompt": "?"}', "line 2, field 'id': 'a' is also the id of line 1"),
        ('{"image": "img/0.png", "prompt": "?", "answer": "3"}', "line 2, field 'answer': unknown field"),
        ("not json", "line 2: not JSON"),
    ],
)
def test_bad_questions_file_is_named_line_and_field(adapter, questions, tmp_path, capsys, line, expected):
    questions.write_text(questions.read_text().splitlines()[0] + "\n" + line + "\n")
    out = tmp_path / "a.jsonl"
    assert cli(["infer", "--adapter", str(adapter), "--file", str(questions), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {questions} {expected}") and "Traceback" not in err
    assert not out.exists()


def test_infer_usage_errors(adapter, questions, capsys):
    base = ["infer", "--adapter", str(adapter)]
    for extra, message in [
        (["--file", str(questions)], "--file needs --out"),
        (["--file", str(questions), "--out", "a.jsonl", "--prompt", "?"], "--file takes the images and prompts"),
        (["--image", "x.png", "--chat", "--prompt", "?"], "--chat reads the conversation from stdin"),
    ]:
        assert cli(base + extra) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")


def test_stdin_questions_alone_or_as_a_chat(adapter, tmp_path, monkeypatch, capsys):
    from vlm_sft.cli.hub import answer
    from vlm_sft.hub.adapters import load_adapter_model

    image = digit_image(tmp_path / "x.png")
    args = ["infer", "--adapter", str(adapter), "--image", str(image), "--max-new-tokens", "5"]
    follow_up = "Are you sure?"
    singles = []
    for question in (PROMPT, follow_up):
        assert cli([*args, "--prompt", question]) == 0
        singles.append(capsys.readouterr().out.strip())
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{PROMPT}\n{follow_up}\n\n"))
    assert cli(args) == 0
    assert capsys.readouterr().out.strip().split("\n") == singles  # each question on its own
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{PROMPT}\n{follow_up}\n"))
    assert cli([*args, "--chat"]) == 0
    chat = capsys.readouterr().out.strip().split("\n")
    # The second turn sees the first: the same reply as the two-turn conversation asked directly.
    from PIL import Image

    model, processor, _ = load_adapter_model(adapter, dtype="auto")
    picture = Image.open(image).convert("RGB")
    history = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
        {"role": "assistant", "content": [{"type": "text", "text": singles[0]}]},
        {"role": "user", "content": [{"type": "text", "text": follow_up}]},
    ]
    assert chat == [singles[0], answer(model, processor, history, 5, images=[picture])]
    assert chat[1] != singles[1], "the follow-up alone must answer differently, or this test proves nothing"
    text = processor.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert text.count(PROMPT) == 1 and follow_up in text  # the history really is in the second prompt
