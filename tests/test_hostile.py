"""Hostile inputs and faults (issue 13): each one ends in one `error: ...` line naming what is wrong, the right
exit code (1 bad data or state, 2 bad arguments), no traceback, nothing of the user's deleted, and no hang.

Most cases fail before any model loads and run in-process; subprocesses only where the real entry point or a
fresh huggingface_hub configuration matters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hostile import BIN, REPO, one_error, snapshot


@pytest.fixture
def run_args(tmp_path, tiny_llava, digits, monkeypatch):
    """Recipe arguments for a 1-step run on 4 digits into tmp_path/out (absolute paths, no eval)."""
    monkeypatch.setenv("VLM_SFT_CACHE", str(tmp_path / "cache"))
    train = tmp_path / "train.json"
    train.write_text(json.dumps(json.loads(Path(digits["train"]).read_text())[:4]))
    out = tmp_path / "out"
    args = [str(REPO / "recipes/quickstart.yaml"), "--model_name_or_path", str(tiny_llava), "--eval_file", ""]
    args += ["--train_file", str(train), "--image_dir", str(digits["image_dir"]), "--output_dir", str(out)]
    return [*args, "--max_steps", "1", "--per_device_train_batch_size", "2", "--logging_steps", "1"]


def previous_run(out: Path) -> dict[str, bytes]:
    """An output_dir as a finished vlm-sft run leaves it (marker included); returns its snapshot."""
    from vlm_sft.training.output_dir import MARKER

    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"old checkpoint")
    files = {"adapter_model.safetensors": b"old adapter", "adapter_config.json": b"{}", "README.md": b"old card"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / MARKER).write_text(json.dumps({"written_by": "vlm-sft", "finished": True, "files": sorted(files)}))
    return snapshot(out)


def no_model(*args, **kwargs):
    raise AssertionError("this refusal must come before the model loads")


# ---------------------------------------------------------------- 1-3: output_dir, nothing lost
@pytest.mark.parametrize(
    "override",
    [
        ["--lora_r", "0"],
        ["--per_device_train_batch_size", "0"],
        ["--gradient_accumulation_steps", "0"],
        ["--learning_rate", "-1"],
        ["--num_train_epochs", "0", "--max_steps", "-1"],
        ["--lora_dropout", "1.5"],
        ["--max_length", "0"],
    ],
)
def test_impossible_values_are_refused_before_anything_is_touched(run_args, tmp_path, override, capsys, monkeypatch):
    import vlm_sft.training.train as train_module

    monkeypatch.setattr(train_module, "load_model", no_model)
    out = tmp_path / "out"
    before = previous_run(out)
    assert train_module.main([*run_args, *override]) == 2
    line = one_error(capsys.readouterr().err)
    assert override[0].lstrip("-") in line
    assert snapshot(out) == before


def test_failed_run_restores_previous_results_and_success_replaces_them(run_args, tmp_path, capsys, monkeypatch):
    import vlm_sft.training.train as train_module
    from vlm_sft.training.output_dir import LOCK, MARKER, PREVIOUS

    out = tmp_path / "out"
    before = previous_run(out)

    def crash(self, *args, **kwargs):
        (Path(self.args.output_dir) / "partial.bin").write_bytes(b"half")  # something the new run wrote
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patched:
        patched.setattr(train_module.SFTTrainer, "train", crash)
        with pytest.raises(RuntimeError, match="out of memory"):
            train_module.main(run_args)
    assert snapshot(out) == before, "a run that failed before its first save restores what it replaced"

    # The base given relative to the working folder (item 21): the adapter records it absolute.
    tiny_llava = Path(run_args[run_args.index("--model_name_or_path") + 1])
    monkeypatch.chdir(tiny_llava.parent)
    assert train_module.main([*run_args, "--model_name_or_path", tiny_llava.name]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llava.resolve())
    names = {p.name for p in out.iterdir()}
    assert "checkpoint-2" not in names and PREVIOUS not in names and LOCK not in names
    assert (out / "adapter_model.safetensors").read_bytes() != b"old adapter"
    marker = json.loads((out / MARKER).read_text())
    assert marker["finished"] is True and "adapter_model.safetensors" in marker["files"]
    assert set(marker["files"]) == names - {MARKER}


def test_folder_with_files_no_run_wrote_is_refused_and_kept(run_args, tmp_path, capsys, monkeypatch):
    import vlm_sft.training.train as train_module

    monkeypatch.setattr(train_module, "load_model", no_model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "eval_results.json").write_text("{}")
    assert train_module.main([*run_args, "--overwrite_output_dir", "true"]) == 1
    line = one_error(capsys.readouterr().err)
    assert "README.md" in line and "eval_results.json" in line and "files no vlm-sft run wrote" in line
    assert snapshot(out) == {"README.md": b"my notes", "eval_results.json": b"{}"}


def test_second_run_is_refused_naming_the_first(run_args, tmp_path, capsys, caplog, monkeypatch):
    import vlm_sft.training.train as train_module
    from vlm_sft.training.output_dir import LOCK

    monkeypatch.setattr(train_module, "load_model", no_model)
    out = tmp_path / "out"
    before = previous_run(out)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01 10:00:00"}
        (out / LOCK).write_text(json.dumps(lock))
        assert train_module.main(run_args) == 1
        line = one_error(capsys.readouterr().err)
        assert f"PID {holder.pid}" in line and "in use by another run" in line
        assert (out / LOCK).is_file()
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead now: its lock is stale, taken over with a message (this run then stops at the model).
    with pytest.raises(AssertionError, match="before the model loads"):
        train_module.main(run_args)
    assert f"stale lock {out / LOCK} (PID {holder.pid}" in caplog.text
    assert not (out / LOCK).exists(), "the lock is released when the run ends, however it ends"
    (out / LOCK).unlink(missing_ok=True)
    assert snapshot(out) == before


def test_reports_written_into_a_run_belong_to_it(tmp_path):
    from vlm_sft.training.output_dir import OutputDir, record_written

    out = tmp_path / "out"
    previous_run(out)
    (out / "eval").mkdir()  # `vlm-sft eval --recipe` / `make quickstart` write <output_dir>/eval
    with pytest.raises(ValueError, match="eval/"):
        OutputDir(out).check(overwrite=True, resuming=False)
    record_written(out / "eval")
    assert "eval" in [p.name for p in OutputDir(out).check(overwrite=True, resuming=False)]
    record_written(tmp_path / "elsewhere")  # no run there: nothing is written
    assert not (tmp_path / ".vlm_sft_run.json").exists()


def test_output_dir_that_is_a_file(run_args, tmp_path, capsys, monkeypatch):
    import vlm_sft.training.train as train_module

    monkeypatch.setattr(train_module, "load_model", no_model)
    (tmp_path / "out").write_text("a file")
    assert train_module.main(run_args) == 1
    assert "is an existing file" in one_error(capsys.readouterr().err)
    assert train_module.main([*run_args, "--output_dir", str(tmp_path / "out" / "run")]) == 1
    assert "cannot be created" in one_error(capsys.readouterr().err)
    assert (tmp_path / "out").read_text() == "a file"


def test_output_dir_not_writable(run_args, tmp_path, capsys, monkeypatch):
    import vlm_sft.training.train as train_module

    monkeypatch.setattr(train_module, "load_model", no_model)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode bits: answer as the kernel answers any other user
            real_access = os.access

            def access(path, mode, *args, **kwargs):
                return False if Path(path) == locked and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", access)
        assert train_module.main([*run_args, "--output_dir", str(locked / "out")]) == 1
        assert "not writable" in one_error(capsys.readouterr().err)
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- 9, 15, 20: recipes and the command line
def test_recipe_yaml_errors_name_file_and_line(tmp_path, capsys):
    from vlm_sft.training.train import main

    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: out\nlearning_rate: [1e-4\n")
    assert main([str(broken)]) == 2
    assert "broken.yaml, line" in one_error(capsys.readouterr().err)
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("output_dir: !!python/object/apply:os.system ['touch pwned']\n")
    assert main([str(tagged)]) == 2
    line = one_error(capsys.readouterr().err)
    assert "tagged.yaml, line 1" in line and "python/object" in line
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


def test_misspelled_key_gets_a_suggestion(tmp_path, capsys):
    from vlm_sft.training.train import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\nuse_cpu: true\nlearnig_rate: 1.0e-4\n")
    assert main([str(recipe)]) == 2
    line = one_error(capsys.readouterr().err)
    assert "`learnig_rate`" in line and "did you mean `learning_rate`" in line and "in the recipe" in line
    recipe.write_text("output_dir: out\nuse_cpu: true\n")
    assert main([str(recipe), "--lora_rr", "8"]) == 2
    line = one_error(capsys.readouterr().err)
    assert "`lora_rr`" in line and "did you mean `lora_r`" in line and "on the command line" in line
    assert main([str(recipe), "--per_device_train_batch_size", "many"]) == 2
    assert "invalid int value: 'many'" in one_error(capsys.readouterr().err)


def test_hub_token_is_refused_and_never_echoed(tmp_path, capsys):
    from vlm_sft.training.train import main

    token = "hf_secretTOKEN0123456789abcdef"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\nuse_cpu: true\n")
    assert main([str(recipe), "--hub_token", token]) == 2
    err = capsys.readouterr().err
    assert "HF_TOKEN" in one_error(err) and "hf auth login" in err and token not in err
    recipe.write_text(f"output_dir: out\nuse_cpu: true\nhub_token: {token}\n")
    assert main([str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "r.yaml" in one_error(err) and "HF_TOKEN" in err and token not in err


def test_missing_local_model_path_is_named(run_args, tmp_path, capsys):
    from vlm_sft.training.train import main

    assert main([*run_args, "--model_name_or_path", str(tmp_path / "no-such-model")]) == 2
    line = one_error(capsys.readouterr().err)
    assert "model_name_or_path" in line and "no-such-model" in line


# ---------------------------------------------------------------- 8, 13: the vlm-sft command line
@pytest.mark.parametrize(
    "argv, named",
    [
        (["eval", "out", "--eval-file", "x.json", "--batch-size", "0"], "--batch-size"),
        (["eval", "out", "--eval-file", "x.json", "--max-new-tokens", "-3"], "--max-new-tokens"),
        (["infer", "--adapter", "out", "--image", "a.png", "--max-new-tokens", "-1"], "--max-new-tokens"),
    ],
)
def test_cli_impossible_numbers(argv, named, capsys):
    from vlm_sft.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    line = one_error(capsys.readouterr().err)
    assert named in line and "must be at least 1" in line


def test_unknown_command_is_named(capsys):
    from vlm_sft.cli import main

    assert main(["trian"]) == 2
    line = one_error(capsys.readouterr().err)
    assert "'trian'" in line and "did you mean `vlm-sft train`" in line


def test_closed_pipe_ends_quietly(tmp_path):
    rows = [
        {"id": i, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}
        for i in range(3000)
    ]
    data = tmp_path / "big.json"
    data.write_text(json.dumps(rows))
    command = f"{BIN / 'vlm-sft'} data validate {data} --all | head -1"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


# ---------------------------------------------------------------- 1 (kill -9), 14, 15: the real entry points
def test_results_set_aside_by_a_killed_run_come_back(run_args, tmp_path, caplog, monkeypatch):
    """A run killed (-9) after moving the previous results aside and before saving: the next run restores them."""
    import vlm_sft.training.train as train_module
    from vlm_sft.training.output_dir import LOCK, MARKER, PREVIOUS

    monkeypatch.setattr(train_module, "load_model", no_model)
    out = tmp_path / "out"
    before = previous_run(out)
    aside = out / PREVIOUS
    aside.mkdir()
    for name in before:
        if "/" not in name:
            (out / name).rename(aside / name)
    (out / "checkpoint-2").rename(aside / "checkpoint-2")
    (out / MARKER).write_text(json.dumps({"written_by": "vlm-sft", "finished": False, "files": ["runs"]}))
    (out / "runs").mkdir()  # what the killed run had written
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.raises(AssertionError, match="before the model loads"):
        train_module.main(run_args)
    assert "restoring the results" in caplog.text
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "adapter_config.json", "adapter_model.safetensors", "checkpoint-2", MARKER]
    )


def test_accelerate_launch_quiet_ends_with_our_line_and_never_echoes_a_token(tmp_path):
    token = "hf_launchTOKEN0123456789abcdefgh"
    launch = [BIN / "accelerate", "launch", "--quiet", "--num_processes", "1", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", REPO / "scripts/sft_vlm.py"]
    recipe = REPO / "recipes/quickstart.yaml"
    # One launch (each costs two interpreters importing torch); the other refusals run in-process above.
    command = [*launch, recipe, "--output_dir", tmp_path / "out", "--hub_token", token]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and "Traceback" not in done.stderr, lines[-5:]
    assert lines[-1].startswith("error: the command line: hub_token is not accepted"), lines[-5:]
    assert token not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
