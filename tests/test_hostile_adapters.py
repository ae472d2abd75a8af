"""Hostile adapters and Hub faults (issue 13, items 10-12, 22): a broken file or network is named, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from hostile import BIN, image_folder, llava_row, one_error


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return image_folder(tmp_path)


# ---------------------------------------------------------------- 10-12, 21, 22: adapters, push, infer, merge
@pytest.fixture(scope="module")
def adapter(tiny_llava, tmp_path_factory) -> Path:
    from tiny_adapter import make_tiny_adapter

    return make_tiny_adapter(tiny_llava, tmp_path_factory.mktemp("adapter") / "run")


@pytest.fixture
def broken_adapter(adapter, tmp_path) -> Path:
    import shutil

    copy = tmp_path / "broken"
    shutil.copytree(adapter, copy)
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut off mid-copy
    return copy


def cli(capsys, *argv) -> tuple[int, str]:
    from vlm_sft.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def test_truncated_adapter_is_named_in_infer_eval_merge(broken_adapter, data_dir, tmp_path, capsys):
    weights = str(broken_adapter / "adapter_model.safetensors")
    image = data_dir / "img.png"
    code, err = cli(capsys, "infer", "--adapter", broken_adapter, "--image", image, "--prompt", "q", "--device", "cpu")
    assert code == 1 and weights in one_error(err) and "truncated" in err
    code, err = cli(capsys, "merge", "--adapter", broken_adapter, "--out", tmp_path / "merged")
    assert code == 1 and weights in one_error(err) and not (tmp_path / "merged").exists()
    (data_dir / "eval.json").write_text(json.dumps([llava_row(0)]))
    code, err = cli(
        capsys, "eval", broken_adapter, "--eval-file", data_dir / "eval.json", "--no-base", "--device", "cpu"
    )
    assert code == 1 and weights in one_error(err)


def test_malformed_adapter_config_is_named(broken_adapter, data_dir, capsys):
    (broken_adapter / "adapter_config.json").write_text('{"base_model_name_or_path": ')
    image = data_dir / "img.png"
    code, err = cli(capsys, "infer", "--adapter", broken_adapter, "--image", image, "--prompt", "q", "--device", "cpu")
    assert code == 1 and str(broken_adapter / "adapter_config.json") in one_error(err) and "not valid JSON" in err


def test_malformed_base_config_is_named(adapter, tiny_llava, data_dir, tmp_path, capsys):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llava, base)
    (base / "config.json").write_text("{not json")
    image = data_dir / "img.png"
    argv = ["infer", "--adapter", adapter, "--base", base, "--image", image, "--prompt", "q", "--device", "cpu"]
    code, err = cli(capsys, *argv)
    assert code == 1 and "config.json" in one_error(err)


def test_infer_refuses_a_decompression_bomb(adapter, tmp_path, capsys):
    from PIL import Image

    Image.new("L", (10_000, 10_000)).save(tmp_path / "bomb.png")  # 100 Mpx of zeros: a few KB on disk
    argv = ["infer", "--adapter", adapter, "--image", tmp_path / "bomb.png", "--prompt", "q", "--device", "cpu"]
    code, err = cli(capsys, *argv)
    assert code == 1 and "bomb.png" in one_error(err) and "over the limit" in err


def test_push_of_missing_folder_and_unreachable_hub(adapter, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN="hf_" + "x" * 30)
    with socket.socket() as hold:  # a local port that refuses connections
        hold.bind(("127.0.0.1", 0))
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{hold.getsockname()[1]}"
        for folder, expected in [(tmp_path / "nothing", "does not exist"), (adapter, "failed (ConnectError")]:
            command = [BIN / "vlm-sft", "push", folder, "me/repo", "--base-model-id", "tiny-org/tiny-llava"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert expected in one_error(done.stderr) and str(folder) in done.stderr
            assert env["HF_TOKEN"] not in done.stderr


def test_merge_cleans_what_an_interrupted_merge_left(adapter, tmp_path, capsys):
    stale = tmp_path / ".merged.partial-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    code, _ = cli(capsys, "merge", "--adapter", adapter, "--out", tmp_path / "merged", "--dtype", "float32")
    assert code == 0 and not stale.exists() and (tmp_path / "merged" / "config.json").is_file()


def test_end_of_training_push_failure_is_one_message_with_the_retry(adapter):
    """Training's own push (this process is offline): the adapter is saved, the message says how to push it later."""
    from vlm_sft.hub.adapters import PushError, PushRequest, push_after_training

    with pytest.raises(PushError) as failed:
        push_after_training(adapter, PushRequest(repo_id="me/digits", base_model="tiny-org/tiny-llava"))
    message = str(failed.value)
    assert f"the adapter is saved in {adapter}" in message and f"vlm-sft push {adapter} me/digits" in message
    assert "\n" not in message
