"""`vlm-sft data validate | stats | init`: exit codes, reports, token lengths, and the workbench example."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlm_sft.cli import main
from vlm_sft.data.loading import load_conversations, load_splits
from vlm_sft.training.config import VisionArguments

REPO = Path(__file__).resolve().parents[1]
WORKBENCH = REPO / "examples" / "workbench"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `vlm-sft ARGV` in-process: (exit code, stdout, stderr); argparse's own exits count too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def png(path: Path, color=(200, 30, 30), size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def sample(answer: str = "Red.", image: str | list | None = "a.png", question: str = "<image>\nColor?", **extra):
    record = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **extra}
    return record if image is None else {**record, "image": image}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png", (30, 30, 200))
    return tmp_path


@pytest.fixture
def good_file(folder: Path) -> Path:
    records = [
        sample(id="one"),
        sample("Both red and blue.", ["a.png", "b.png"], "<image>\n<image>\nColors?"),
        sample("Hello there.", None, "Hi"),
    ]
    path = folder / "good.json"
    path.write_text(json.dumps(records))
    return path


# ---------------------------------------------------------------- validate
def test_validate_valid_data_exits_0(capsys, good_file):
    code, out, err = cli(capsys, "data", "validate", good_file)
    assert code == 0, out + err
    assert "3 samples, 3 images" in out and out.strip().endswith("VALID")


def test_validate_invalid_data_exits_1_with_every_problem(capsys, folder):
    path = folder / "bad.json"
    path.write_text(json.dumps([sample(id="ok"), sample("", id="empty"), sample(image="gone.png", id="lost")]))
    code, out, _ = cli(capsys, "data", "validate", path)
    assert code == 1
    assert "sample 1 (id 'empty')" in out and "field conversations[1].value" in out
    assert "sample 2 (id 'lost')" in out and "field image" in out and "gone.png" in out
    assert "2 errors in 2 samples" in out and "INVALID" in out


BAD_FILES = {
    "syntax.json": '[{"conversations": [{"from": "human", "value": "Q?"} {"from": "gpt", "value": "A."}]}]',
    "lines.jsonl": '{"conversations": []}\n{"conversations": [\n',
    "keys.json": json.dumps([{"image": "a.png", "conversatoins": []}]),
    "role.jsonl": json.dumps(
        {"messages": [{"role": "robot", "content": "Q?"}, {"role": "assistant", "content": "A"}]}
    ),
    "order.json": json.dumps([{"conversations": [{"from": "gpt", "value": "A."}]}]),
    "annotate.json": json.dumps([sample("[ANNOTATE: describe the tools]")]),
    "count.json": json.dumps([sample(image=["a.png", "b.png"])]),
    "escape.json": json.dumps([sample(image="../../etc/passwd")]),
    "notimage.json": json.dumps([sample(image="notes.png")]),
    "types.json": json.dumps([{"conversations": [{"from": 1, "value": None}]}]),
}


def test_bad_files_exit_1_naming_the_sample(capsys, folder):
    (folder / "notes.png").write_text("not an image")
    for name, text in BAD_FILES.items():
        (folder / name).write_text(text)
        code, out, err = cli(capsys, "data", "validate", folder / name)
        assert code == 1, (name, out, err)
        assert re.search(rf"error: \S*{re.escape(name)}, sample \d", out), (name, out)
        assert "Traceback" not in out + err


def test_console_script_exit_codes_and_no_traceback(folder):
    (folder / "bad.json").write_text(BAD_FILES["syntax.json"])

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "vlm_sft.cli", "data", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
        )

    bad = run("validate", str(folder / "bad.json"))
    column = BAD_FILES["syntax.json"].index("} {") + 3  # 1-based: the "{" where a "," was expected
    assert bad.returncode == 1 and f"sample 0, line 1, column {column}" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
    usage = run("validate", str(folder / "missing.json"))
    assert usage.returncode == 2 and "does not exist" in usage.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data"], "required: ACTION"),
        (["data", "check", "x.json"], "invalid choice"),
        (["data", "validate", "{good}", "--format", "yaml"], "invalid choice"),
        (["data", "validate", "{good}", "--max-length", "10"], "--max-length needs --processor"),
        (["data", "validate", "{folder}/missing.json"], "does not exist"),
        (["data", "validate", "{good}", "--image-dir", "{folder}/nowhere"], "is not a folder"),
        (["data", "validate", "{good}", "--max-pixels", "0"], "--max-pixels must be positive"),
        (["data", "validate", "{good}", "--processor", "{folder}/no-processor"], "cannot load processor"),
        (["data", "init", "{folder}/nowhere", "--out", "{folder}/d.json"], "is not a folder"),
        (["data", "init", "{folder}", "--out", "{good}"], "exists; pass --force"),
    ],
)
def test_usage_errors_exit_2(capsys, folder, good_file, argv, message):
    argv = [a.format(good=good_file, folder=folder) for a in argv]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and message in err, (out, err)


# ---------------------------------------------------------------- stats
def test_stats_text_and_json(capsys, good_file):
    code, out, _ = cli(capsys, "data", "stats", good_file)
    assert code == 0
    assert "samples              3 (1 text-only" in out
    assert "length (characters)" in out and "p90" in out
    assert "answer length histogram" in out and re.search(r"2-3 \| #+ +1", out)  # "Hello there." is 2 words

    code, out, _ = cli(capsys, "data", "stats", good_file, "--json")
    stats = json.loads(out)
    assert (stats["samples"], stats["text_only"], stats["images"]) == (3, 1, 3)
    assert stats["images_per_sample"] == {"0": 1, "1": 1, "2": 1}
    assert stats["answer_words"] == {"min": 1, "p50": 2, "p90": 4, "max": 4}
    assert dict(stats["answer_histogram"]) == {"1": 1, "2-3": 1, "4-7": 1}


def test_stats_refuses_invalid_data(capsys, folder):
    path = folder / "bad.json"
    path.write_text(json.dumps([sample(" ")]))
    code, out, _ = cli(capsys, "data", "stats", path)
    assert code == 1 and "sample 0" in out and "conversations[1].value" in out


# ---------------------------------------------------------------- init -> fill -> validate
def test_init_then_fill_then_validate(capsys, tmp_path):
    photos = tmp_path / "data" / "photos"
    for name in ("bench_b.png", "bench_a.jpg", "sub/bench_c.png"):
        png(photos / name)
    (photos / "notes.txt").write_text("not an image")
    png(photos / ".hidden" / "skip.png")
    draft = tmp_path / "data" / "draft.json"

    code, out, _ = cli(capsys, "data", "init", photos, "--out", draft)
    assert code == 0 and "wrote 3 draft samples" in out and "--image-dir" not in out
    records = json.loads(draft.read_text())
    assert [r["image"] for r in records] == ["photos/bench_a.jpg", "photos/bench_b.png", "photos/sub/bench_c.png"]
    assert [r["id"] for r in records] == ["bench_a", "bench_b", "sub/bench_c"]

    code, out, _ = cli(capsys, "data", "validate", draft)
    assert code == 1
    assert out.count("unannotated placeholder '[ANNOTATE:") + out.count('unannotated placeholder "[ANNOTATE:') == 3

    text = re.sub(r"\[ANNOTATE:[^\]]*\]+", "A red square on the bench.", draft.read_text())
    draft.write_text(text)
    code, out, _ = cli(capsys, "data", "validate", draft)
    assert code == 0, out
    assert len(load_conversations(draft)) == 3


def test_init_outside_the_image_folder_needs_image_dir(capsys, tmp_path):
    png(tmp_path / "photos" / "a.png")
    draft = tmp_path / "elsewhere" / "draft.jsonl"
    code, out, _ = cli(capsys, "data", "init", tmp_path / "photos", "--out", draft, "--limit", "1")
    assert code == 0 and f"--image-dir {tmp_path / 'photos'}" in out
    assert json.loads(draft.read_text().splitlines()[0])["image"] == "a.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli(capsys, "data", "init", empty, "--out", tmp_path / "x.json")
    assert code == 1 and "no image files found" in err and "no image files" not in out


# ---------------------------------------------------------------- token lengths with a real processor
def test_validate_counts_text_and_image_tokens(capsys, folder, tiny_llava, llava_processor):
    one = sample("Red.", "a.png", "<image>\nColor?", id="one")
    two = sample("Red.", ["a.png", "b.png"], "<image>\n<image>\nColor?", id="two")
    path = folder / "lengths.json"
    path.write_text(json.dumps([one, two]))

    code, out, _ = cli(capsys, "data", "validate", path, "--processor", tiny_llava, "--max-length", "1000")
    assert code == 0, out
    lengths = {m[0]: int(m[1]) for m in re.findall(r"\(id '(\w+)'\): (\d+) tokens", out)}
    # The second image adds its expanded image tokens plus the template's "<image>\n" newline.
    image_tokens = (32 // 8) ** 2  # tiny LLaVA: 32 px images, 8 px patches, CLS token dropped
    newline = len(llava_processor.tokenizer("\n", add_special_tokens=False)["input_ids"])
    assert lengths["two"] - lengths["one"] == image_tokens + newline
    text_only = llava_processor.tokenizer(
        llava_processor.apply_chat_template(load_conversations(path)[0]["messages"], tokenize=False)
    )["input_ids"]
    assert lengths["one"] >= len(text_only) + image_tokens - 1  # the <image> token expands, never vanishes

    code, out, _ = cli(
        capsys, "data", "validate", path, "--processor", tiny_llava, "--max-length", str(lengths["one"])
    )
    assert code == 1
    assert f"sample 1 (id 'two'), line 1, field conversations: is {lengths['two']} tokens long" in out
    assert "sample 0 (id 'one'), line" not in out.split("token lengths")[1].split("p50")[1]


# ---------------------------------------------------------------- the workbench example
def _draw_workbench(out: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_images", WORKBENCH / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(out / "images")])


def test_workbench_example_is_valid_and_realistic(capsys, tmp_path):
    for name in ("train.json", "eval.json"):
        shutil.copy(WORKBENCH / name, tmp_path / name)
    _draw_workbench(tmp_path)
    for name in ("train.json", "eval.json"):
        code, out, _ = cli(capsys, "data", "validate", tmp_path / name)
        assert code == 0, out
    train, evaluation = load_splits(
        VisionArguments(train_file=str(tmp_path / "train.json"), eval_file=str(tmp_path / "eval.json"))
    )
    assert len(train) >= 20 and len(evaluation) >= 1
    images = [len(row) for row in train["images"]]
    assert images.count(0) >= 1 and sum(n >= 2 for n in images) >= 2  # text-only and multi-image samples
    replies = [[m for m in conv if m["role"] == "assistant"] for conv in train["messages"]]
    assert sum(len(r) >= 2 for r in replies) >= 3  # multi-turn
    answers = [p["text"] for r in replies for m in r for p in m["content"]]
    structured = [json.loads(a) for a in answers if a.startswith("{")]
    assert len(structured) >= 5 and all(isinstance(s, dict) for s in structured)
    assert any("soldering" in a.lower() and "on" in a for a in answers)
    assert (WORKBENCH / ".gitignore").read_text().strip() == "images/"
