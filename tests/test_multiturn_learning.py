"""A fact asked in the second turn scores like the same fact asked alone, through `vlm-sft eval`.

Would have caught the llava-1.5 mismatch: training rendered `ASSISTANT: odd</s> USER: ...` while eval rendered
the history without `</s>`, a text the adapter never saw. Also: an adapter saved with the model's own template
(as before the training template existed) scores the same, and `infer` answers as `eval` does on transparent,
palette, greyscale and 16-bit images with the trained system prompt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_sft.cli import main as cli

pytestmark = pytest.mark.slow  # trains the tiny model (160 steps: seconds on an idle CPU)

REPO = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("VLM_SFT_MULTITURN_STEPS", "160"))
SYSTEM = "Answer with one word."
FIRST, SECOND, SINGLE = "Is the digit odd or even?", "And which digit is it?", "What digit is this?"


def _conversation(image: str, label: int, two_turns: bool) -> dict:
    def user(text: str, with_image: bool) -> dict:
        parts = [{"type": "image", "image": image}] if with_image else []
        return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}

    def bot(text: str) -> dict:
        return {"role": "assistant", "content": text}

    if not two_turns:
        return {"messages": [user(SINGLE, True), bot(str(label))]}
    parity = "odd" if label % 2 else "even"
    return {"messages": [user(FIRST, True), bot(parity), user(SECOND, False), bot(str(label))]}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llava, digits) -> dict:
    """Train on half single-turn, half two-turn digits (messages JSONL, quickstart recipe, a system prompt)."""
    from vlm_sft.training.train import main as train

    root = tmp_path_factory.mktemp("multiturn")
    images = digits["image_dir"]
    train_records = json.loads(digits["train"].read_text())
    labels = [(r["image"], int(r["conversations"][1]["value"])) for r in train_records]
    rows = [_conversation(name, label, i % 2 == 1) for i, (name, label) in enumerate(labels)]
    held_out = [(r["image"], int(r["conversations"][1]["value"])) for r in json.loads(digits["eval"].read_text())]
    held_out = held_out[:64]
    files = {
        "train": _write(root / "train.jsonl", rows),
        "single": _write(root / "single.jsonl", [_conversation(n, y, False) for n, y in held_out]),
        "second": _write(root / "second.jsonl", [_conversation(n, y, True) for n, y in held_out]),
    }
    out = root / "out"
    code = train(
        [
            str(REPO / "recipes" / "quickstart.yaml"),
            *("--model_name_or_path", str(tiny_llava), "--output_dir", str(out)),
            *("--train_file", str(files["train"]), "--eval_file", ""),
            *("--image_dir", str(images), "--system_prompt", SYSTEM),
            *("--max_steps", str(STEPS), "--logging_steps", "50"),
        ]
    )
    assert code == 0
    return {"root": root, "out": out, "images": images, **files}


def _eval(adapter: Path, eval_file: Path, out: Path, *extra: str) -> dict:
    args = ["eval", f"tuned={adapter}", "--eval-file", str(eval_file), "--no-base", "--out", str(out), *extra]
    args += ["--max-new-tokens", "8"]
    assert cli(args) == 0
    return json.loads((out / "eval_report.json").read_text())


def test_second_turn_scores_like_a_single_turn(run):
    single = _eval(run["out"], run["single"], run["root"] / "eval-single", "--image-dir", str(run["images"]))[
        "models"
    ][0]
    second = _eval(run["out"], run["second"], run["root"] / "eval-second", "--image-dir", str(run["images"]))[
        "models"
    ][0]
    s, m = single["metrics"]["exact_match"], second["metrics"]["exact_match"]
    print(f"\nmultiturn: single_turn={s:.3f} second_turn={m:.3f} steps={STEPS}")
    assert s >= 0.3, "the tiny task was not learned: the comparison would say nothing"
    assert m >= s - 0.08, (s, m)
    assert single["system_prompt"] == SYSTEM == second["system_prompt"]  # the run's, read from output_dir


def test_saved_processor_prompt_is_a_prefix_of_the_training_text(run, tiny_llava):
    from transformers import AutoProcessor

    from vlm_sft.collator import VisionSFTCollator

    saved = AutoProcessor.from_pretrained(run["out"])
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}]
    messages += json.loads(run["second"].read_text().splitlines()[0])["messages"]
    for m in messages[1:]:
        m["content"] = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
    (text,), _ = VisionSFTCollator(AutoProcessor.from_pretrained(tiny_llava)).render_with_spans([messages])
    prompt = saved.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)
    assert f"</s> USER: {SECOND} ASSISTANT:" in prompt  # the history as trained: the first reply ends with </s>
    card = (run["out"] / "README.md").read_text()
    assert "## Chat template" in card and "</s>" in card


def test_an_adapter_saved_with_the_old_template_scores_the_same(run, tiny_llava, tmp_path):
    import shutil

    from transformers import AutoProcessor

    old = tmp_path / "old"
    shutil.copytree(run["out"], old)
    AutoProcessor.from_pretrained(tiny_llava).save_pretrained(old)  # the base's template, as old runs saved it
    assert "</s>" not in (old / "chat_template.jinja").read_text()
    new = _eval(run["out"], run["second"], tmp_path / "new", "--limit", "16", "--image-dir", str(run["images"]))
    was = _eval(old, run["second"], tmp_path / "was", "--limit", "16", "--image-dir", str(run["images"]))
    assert [e["answers"] for e in new["examples"]] == [e["answers"] for e in was["examples"]]


def _odd_images(folder: Path, source: Path) -> list[Path]:
    """One digit as a transparent RGBA, a palette image with a transparent colour, greyscale and 16-bit PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = np.asarray(Image.open(source).convert("L"))
    rgba = np.zeros((*grey.shape, 4), dtype=np.uint8)
    rgba[..., 3] = 255 - grey  # dark strokes opaque, background transparent: white only when composited
    paths = [folder / "rgba.png", folder / "palette.png", folder / "grey.png", folder / "deep.png"]
    Image.fromarray(rgba, "RGBA").save(paths[0])
    palette = Image.fromarray(np.where(grey > 128, 255, 0).astype(np.uint8)).convert("P")
    palette.save(paths[1], transparency=palette.getpixel((0, 0)))
    Image.fromarray(grey, "L").save(paths[2])
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths[3])
    return paths


def test_infer_and_eval_give_the_same_answers(run, digits, tmp_path, capsys):
    """Same pixels (one loader) and the same system prompt (the run's, read from output_dir) in both paths."""
    rows, paths = [], []
    for i, record in enumerate(json.loads(digits["eval"].read_text())[:2]):
        for path in _odd_images(tmp_path / f"img{i}", digits["image_dir"] / record["image"]):
            paths.append(path)
            label = int(record["conversations"][1]["value"])
            rows.append(_conversation(str(path.relative_to(tmp_path)), label, False))
    report = _eval(run["out"], _write(tmp_path / "odd.jsonl", rows), tmp_path / "eval")
    by_eval = [e["answers"]["tuned"] for e in report["examples"]]
    by_infer = []
    for path in paths:
        capsys.readouterr()
        args = ["infer", "--adapter", str(run["out"]), "--image", str(path), "--prompt", SINGLE]
        assert cli([*args, "--max-new-tokens", "8"]) == 0
        by_infer.append(capsys.readouterr().out.strip())
    assert by_infer == by_eval, report["examples"]


def test_infer_takes_several_images_in_order_and_none(run, digits, tmp_path, capsys):
    """`--image a --image b` asks about both, in that order, as eval asks a two-image row; no --image: text only."""
    names = [r["image"] for r in json.loads(digits["eval"].read_text())[:2]]
    question = [{"type": "text", "text": "Which digits are these?"}]
    rows = [
        {
            "messages": [
                {"role": "user", "content": [*({"type": "image", "image": n} for n in order), *question]},
                {"role": "assistant", "content": "x"},
            ]
        }  # fmt: skip
        for order in (names, names[::-1], [])
    ]
    report = _eval(
        run["out"], _write(tmp_path / "rows.jsonl", rows), tmp_path / "eval", "--image-dir", str(run["images"])
    )
    by_eval = [e["answers"]["tuned"] for e in report["examples"]]
    by_infer = []
    for order in (names, names[::-1], []):
        images = [arg for n in order for arg in ("--image", str(run["images"] / n))]
        capsys.readouterr()
        args = ["infer", "--adapter", str(run["out"]), *images, "--prompt", question[0]["text"]]
        assert cli([*args, "--max-new-tokens", "8"]) == 0
        by_infer.append(capsys.readouterr().out.strip())
    assert by_infer == by_eval
