"""Hostile data (issue 13, items 4-7 and 16-19): each names file, sample and field; nothing hangs or crashes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from hostile import BIN, image_folder, llava_row


# ---------------------------------------------------------------- 4-6, 16-19: data
@pytest.fixture
def data_dir(tmp_path) -> Path:
    return image_folder(tmp_path)


def validate(capsys, *argv: str) -> tuple[int, str]:
    from vlm_sft.cli import main

    code = main(["data", "validate", *map(str, argv)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out + captured.err


def test_text_over_the_limit_names_the_sample(data_dir, capsys):
    path = data_dir / "long.json"
    path.write_text(json.dumps([llava_row(0), llava_row(1, answer="x" * 100_001)]))
    code, out = validate(capsys, path)
    assert code == 1
    assert "sample 1 (id 's1')" in out and "conversations[1].value" in out and "100,001 characters" in out
    assert "x" * 100 not in out, "the text itself is not echoed"
    code, out = validate(capsys, path, "--max-text-chars", "200000")
    assert code == 0 and "VALID" in out


def test_fifo_is_not_opened(data_dir):
    os.mkfifo(data_dir / "pipe.png")
    path = data_dir / "fifo.json"
    path.write_text(json.dumps([llava_row(0, image="pipe.png")]))
    done = subprocess.run(
        [BIN / "vlm-sft", "data", "validate", path], capture_output=True, text=True, timeout=120
    )  # a hang fails here, bounded
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "'pipe.png'" in done.stdout and "not a regular file" in done.stdout


@pytest.mark.parametrize(
    "text, why",
    [
        ('[{"id": 1, "n": ' + "7" * 5000 + "}]", "digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"id": 1, "n": ' + "7" * 5000 + "}\n", "digits"),
    ],
)
def test_json_numbers_and_nesting_beyond_python(data_dir, capsys, text, why):
    path = data_dir / "odd.json"
    path.write_text(text)
    code, out = validate(capsys, path)
    assert code == 1 and "odd.json" in out and why in out


def train_argv(model: Path, data: Path, out: Path) -> list[str]:
    argv = ["--model_name_or_path", str(model), "--train_file", str(data), "--output_dir", str(out)]
    return [*argv, "--use_peft", "true", "--use_cpu", "true", "--report_to", "none", "--bf16", "false"]


def test_identical_problems_are_grouped(data_dir, capsys, tiny_llava):
    from vlm_sft.training.train import main as train_main

    path = data_dir / "same.json"
    path.write_text(json.dumps([llava_row(i, answer=" ") for i in range(2000)]))
    code, out = validate(capsys, path)
    assert code == 1 and len(out.splitlines()) < 10
    assert "1,997 more like this" in out and "--all" in out
    code, out = validate(capsys, path, "--all")
    assert out.count("non-empty assistant reply") == 2000
    assert train_main(train_argv(tiny_llava, path, data_dir / "o")) == 1  # at training start too
    err = capsys.readouterr().err
    assert len(err.splitlines()) < 10 and "1,997 more like this" in err


def test_empty_dataset_is_invalid_everywhere(data_dir, capsys, tiny_llava):
    from vlm_sft.cli import main
    from vlm_sft.training.train import main as train_main

    path = data_dir / "empty.json"
    path.write_text("[]")
    code, out = validate(capsys, path)
    assert code == 1 and "empty.json" in out and "holds no samples" in out
    assert main(["data", "stats", str(path)]) == 1
    assert "holds no samples" in capsys.readouterr().out
    assert train_main(train_argv(tiny_llava, path, data_dir / "o")) == 1
    err = capsys.readouterr().err
    assert "holds no samples" in err and "Traceback" not in err and not (data_dir / "o").exists()
    assert main(["eval", str(data_dir / "any-adapter"), "--eval-file", str(path), "--no-base"]) == 1
    err = capsys.readouterr().err
    assert "holds no samples" in err and "Traceback" not in err


def test_llava_data_uri_and_url_images(data_dir, capsys):
    import base64

    payload = base64.b64encode((data_dir / "img.png").read_bytes()).decode()
    path = data_dir / "uri.json"
    path.write_text(json.dumps([llava_row(0, image=f"data:image/png;base64,{payload}")]))
    code, out = validate(capsys, path)
    assert code == 0 and payload[:40] not in out
    path.write_text(json.dumps([llava_row(0, image="https://example.com/cat.png")]))
    code, out = validate(capsys, path)
    assert code == 1 and "remote image URL 'https://example.com/cat.png'" in out and "images/https:" not in out
    path.write_text(json.dumps([llava_row(0, image="data:image/png;base64,!!!not-base64" + "A" * 5000)]))
    code, out = validate(capsys, path)
    assert code == 1 and "base64 payload is invalid" in out and "A" * 100 not in out


def test_sixteen_bit_png_ids_and_top_level_object(data_dir, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(data_dir / "deep.png")
    path = data_dir / "d.json"
    path.write_text(json.dumps([llava_row(0, image="deep.png")]))
    code, out = validate(capsys, path)
    assert code == 0, out  # 16-bit is valid: scaled to 8 bits on every path, not clipped to white
    from vlm_sft.rendering import load_image

    assert np.asarray(load_image(data_dir / "deep.png")).mean() == pytest.approx(40000 / 257, abs=1)
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(data_dir / "float.tiff")
    path.write_text(json.dumps([llava_row(0, image="float.tiff")]))
    code, out = validate(capsys, path)
    assert code == 1 and "'float.tiff'" in out and "32-bit float" in out

    path.write_text(
        '[{"id": NaN, "image": "img.png", "conversations": ' + json.dumps(llava_row(0)["conversations"]) + "}]"
    )
    code, out = validate(capsys, path)
    assert code == 1 and "field id: expected a string or a whole number, got a number (nan)" in out

    path.write_text(json.dumps([llava_row(0), llava_row(0, answer="a dog")]))
    code, out = validate(capsys, path)
    assert code == 0 and "id 's0' is also the id of sample 0" in out

    path.write_text(json.dumps({"data": [llava_row(0)]}))
    code, out = validate(capsys, path)
    assert code == 1 and "must be a list of samples" in out and "'data'" in out


# ---------------------------------------------------------------- 7: an uncached model with the Hub unreachable
def test_uncached_model_with_unreachable_hub_fails_in_seconds(data_dir, tmp_path, capsys):
    path = data_dir / "ok.json"
    path.write_text(json.dumps([llava_row(0)]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # an empty cache
    with socket.socket() as hold:  # a local port that refuses connections: bound, never listening
        hold.bind(("127.0.0.1", 0))
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{hold.getsockname()[1]}"
        command = [BIN / "vlm-sft", "data", "validate", path, "--processor", "nobody/uncached-vlm"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "'nobody/uncached-vlm' is not in the local HF cache" in done.stderr
        assert "cannot be reached" in done.stderr and "HF_HUB_OFFLINE=1" in done.stderr

        from vlm_sft.hub.availability import ModelUnavailableError, check_model_available

        with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set"):  # this process is offline
            check_model_available("nobody/uncached-vlm")

    from vlm_sft.training.train import main as train_main  # training: the same check, before the model

    assert train_main(train_argv(Path("nobody/uncached-vlm"), path, tmp_path / "o")) == 1
    assert "'nobody/uncached-vlm' is not in the local HF cache" in capsys.readouterr().err
