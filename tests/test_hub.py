"""Push to and pull from a local Hub-API server (tests/hub_server.py) through huggingface_hub, as a user would.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when it is imported (and conftest sets HF_HUB_OFFLINE=1
for the test process), so everything that talks to the server runs in a subprocess with its own environment,
through the real commands: `vlm-sft train` with push_to_hub, `vlm-sft push`, `vlm-sft infer`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import HubServer, metadata_of
from PIL import Image
from tiny_adapter import PROMPT, chat_inputs, digit_image

from vlm_sft.cli import main as cli

BIN = Path(sys.executable).parent
BASE_ID = "tiny-org/tiny-llava"
TRAIN_REPO = "me/digits-adapter"
CLI_REPO = "me/digits-adapter-cli"
RECIPE_TOKEN = "hf_recipeTOKENabcdef0123456789"
ENV_TOKEN = "hf_envTOKENzyxwvu9876543210"
UPLOADED = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainable_parameters.json",
    "training_summary.json",
}

# Loads an adapter by id (online or offline), saves its logits on the test image; optionally runs `vlm-sft infer`.
PULL_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[5])
from tiny_adapter import PROMPT, chat_inputs
from vlm_sft.hub.adapters import load_adapter_model, resolve_adapter
repo, revision, image, out = sys.argv[1:5]
model, processor, folder = load_adapter_model(repo, revision=revision)
with torch.no_grad():
    logits = model(**chat_inputs(processor, image)).logits
torch.save({"logits": logits, "folder": str(folder)}, out)
if "--infer" in sys.argv:
    from vlm_sft.cli import main
    print("ANSWER:", end="", flush=True)
    main(["infer", "--adapter", repo, "--revision", revision, "--image", image, "--prompt", PROMPT,
          "--max-new-tokens", "5"])
    try:
        resolve_adapter("me/never-pulled")
    except FileNotFoundError as err:
        print("MISSING:", err)
"""


def _env(hub: HubServer, hf_home: Path, *, offline: bool = False, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_XET="1",  # the test server speaks plain HTTP + LFS, not Xet
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def _run(cmd: list, env: dict, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def hub(tiny_llava):
    with HubServer() as server:
        server.state.seed_folder(BASE_ID, tiny_llava)  # the base model, pulled by id like a real one
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return digit_image(tmp_path_factory.mktemp("image") / "digit.png", seed=3)


@pytest.fixture(scope="module")
def trained(hub, hf_home, tiny_llava, tmp_path_factory) -> dict:
    """`vlm-sft train` with push_to_hub: 2 steps on 4 images, a checkpoint per step, the token in HF_TOKEN."""
    root = tmp_path_factory.mktemp("train")
    (root / "images").mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 255 - 60 * i, 90)).save(root / "images" / f"{i}.png")
        turns = [{"from": "human", "value": f"<image>\n{PROMPT}"}, {"from": "gpt", "value": str(i)}]
        rows.append({"id": f"d{i}", "image": f"{i}.png", "conversations": turns})
    (root / "train.json").write_text(json.dumps(rows))
    recipe = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "quickstart.yaml").read_text())
    recipe.update(
        model_name_or_path=str(tiny_llava),
        hub_base_model_id=BASE_ID,
        train_file=str(root / "train.json"),
        eval_file=None,
        image_dir=str(root / "images"),
        output_dir=str(root / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        push_to_hub=True,
        hub_model_id=TRAIN_REPO,
    )
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    # The token comes from HF_TOKEN: vlm-sft refuses hub_token on the command line and in recipes.
    done = _run([BIN / "vlm-sft", "train", root / "recipe.yaml"], _env(hub, hf_home, token=RECIPE_TOKEN), root)
    return {"out": root / "out", "stdout": done.stdout, "stderr": done.stderr, "root": root}


@pytest.fixture(scope="module")
def pushed_cli(trained, hub, hf_home) -> subprocess.CompletedProcess:
    """`vlm-sft push` of the same run to a new private repo, on a branch, with the token from HF_TOKEN."""
    cmd = [BIN / "vlm-sft", "push", trained["out"], CLI_REPO, "--private", "--revision", "exp", "--license", "mit"]
    return _run(cmd, _env(hub, hf_home, token=ENV_TOKEN), trained["root"])


def test_upload_selection_leaves_training_state_out(tmp_path):
    from vlm_sft.hub.adapters import select_upload_files

    names = [
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer.json",
        "chat_template.jinja",
        "processor_config.json",
        "loss.png",
        "eval_report.json",
        "eval_report.md",
        "training_args.bin",
        "trainer_state.json",
        "optimizer.pt",
        "checkpoint-5/adapter_model.safetensors",
        "checkpoint-5/optimizer.pt",
        "runs/events.out.tfevents.1",
        "additional_chat_templates/tools.jinja",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    selected = set(select_upload_files(tmp_path))
    assert selected == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer.json",
        "chat_template.jinja",
        "processor_config.json",
        "loss.png",
        "eval_report.json",
        "eval_report.md",
        "additional_chat_templates/tools.jinja",
    }
    asked = set(select_upload_files(tmp_path, include_checkpoints=True, include=["training_args.bin"]))
    assert asked - selected == {
        "checkpoint-5/adapter_model.safetensors",
        "checkpoint-5/optimizer.pt",
        "training_args.bin",
    }
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model"):
        select_upload_files(tmp_path)


def test_take_over_push_turns_trainer_push_off_and_checks_base_first(tmp_path):
    from trl import ModelConfig, SFTConfig

    from vlm_sft.hub.adapters import take_over_push
    from vlm_sft.hub.model_card import BaseModelIdError
    from vlm_sft.training.config import VisionArguments

    def args():
        return SFTConfig(
            output_dir=str(tmp_path / "run"),
            push_to_hub=True,
            hub_token=RECIPE_TOKEN,
            use_cpu=True,
            report_to="none",
            hub_revision="exp",
        )

    training_args = args()
    request = take_over_push(
        training_args, ModelConfig(model_name_or_path=".cache/tiny"), VisionArguments(hub_base_model_id=BASE_ID)
    )
    assert not training_args.push_to_hub and training_args.hub_token is None
    assert request.repo_id == "run" and request.revision == "exp" and request.token == RECIPE_TOKEN
    assert RECIPE_TOKEN not in repr(request)
    with pytest.raises(BaseModelIdError, match="hub_base_model_id"):  # before any training happens
        take_over_push(args(), ModelConfig(model_name_or_path=".cache/tiny"), VisionArguments())
    no_push = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", hub_token=RECIPE_TOKEN)
    assert take_over_push(no_push, None, None) is None
    assert no_push.hub_token is None, "a recipe's token never reaches training_args.bin, pushing or not"


def test_train_pushes_our_card_once_and_no_training_state(trained, hub, tiny_llava):
    out, state = trained["out"], hub.state
    files = state.files(TRAIN_REPO)
    expected = UPLOADED | ({"loss.png"} if (out / "loss.png").exists() else set())
    assert set(files) == expected | {".gitattributes"}, "checkpoints, optimizer states, training_args.bin stay local"
    assert (out / "checkpoint-1").is_dir() and (out / "training_args.bin").is_file()
    # One commit: ours at the end. The Trainer's own push (TRL's text card, a commit per save) is off.
    commits = [r for r in state.requests if r == ("POST", f"/api/models/{TRAIN_REPO}/commit/main")]
    assert len(commits) == 1
    assert state.repos[TRAIN_REPO].resolve("main").files["adapter_model.safetensors"].lfs  # went through LFS
    meta = metadata_of(files["README.md"])
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == BASE_ID and meta["base_model_relation"] == "adapter"
    assert {"lora", "peft", "trl", "sft", "vision-language"} <= set(meta["tags"])
    card = files["README.md"].decode()
    assert card == (out / "README.md").read_text(), "the local card is refreshed on push"
    assert f'PeftModel.from_pretrained(base, "{TRAIN_REPO}")' in card and "final training loss" in card
    # The uploaded adapter names its base by Hub id; the local one keeps the folder it was trained from.
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llava)
    assert json.loads(files["training_summary.json"])["base_model_name_or_path"] == BASE_ID
    # The recipe's token was used, and is nowhere else.
    assert RECIPE_TOKEN in state.tokens
    assert RECIPE_TOKEN not in trained["stdout"] + trained["stderr"]
    assert _files_containing(out, RECIPE_TOKEN) == []
    assert not any(RECIPE_TOKEN.encode() in data for data in files.values())


def test_push_cli_private_branch(pushed_cli, trained, hub):
    repo = hub.state.repos[CLI_REPO]
    assert repo.private and set(repo.branches) == {"main", "exp"}
    assert set(hub.state.files(CLI_REPO, "main")) == {".gitattributes"}, "pushed to the branch only"
    files = hub.state.files(CLI_REPO, "exp")
    assert UPLOADED <= set(files)
    meta = metadata_of(files["README.md"])
    assert meta["license"] == "mit" and meta["base_model"] == BASE_ID
    assert f"{CLI_REPO}/commit/" in pushed_cli.stdout
    assert ENV_TOKEN in hub.state.tokens
    assert ENV_TOKEN not in pushed_cli.stdout + pushed_cli.stderr
    assert _files_containing(trained["out"], ENV_TOKEN) == []


def test_push_refuses_a_local_base_path_before_contacting_the_hub(trained, tmp_path, capsys):
    import shutil

    run = Path(shutil.copytree(trained["out"], tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*")))
    summary = json.loads((run / "training_summary.json").read_text())
    summary["hub_base_model_id"] = None
    (run / "training_summary.json").write_text(json.dumps(summary))
    assert cli(["push", str(run), "me/anything"]) == 1  # this process is offline: refused before any request
    assert "hub_base_model_id" in capsys.readouterr().err


def test_pull_by_id_online_then_offline_gives_the_same_outputs(pushed_cli, trained, hub, hf_home, image, tiny_llava):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_sft.cli.hub import answer

    # Reference: the local output folder on the local base.
    processor = AutoProcessor.from_pretrained(trained["out"])
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_llava), trained["out"]).eval()
    with torch.no_grad():
        local_logits = model(**chat_inputs(processor, image)).logits
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.open(image).convert("RGB")},
                {"type": "text", "text": PROMPT},
            ],
        }
    ]
    local_answer = answer(model, processor, messages, max_new_tokens=5)

    root = trained["root"]
    script = root / "pull.py"
    script.write_text(PULL_SCRIPT)
    tests_dir = Path(__file__).parent
    online = [sys.executable, script, CLI_REPO, "exp", image, root / "online.pt", tests_dir]
    _run(online, _env(hub, hf_home, token=ENV_TOKEN), root)  # fills HF_HOME's cache from the server
    pulled = torch.load(root / "online.pt")
    assert Path(hub_cache := hf_home / "hub") in Path(pulled["folder"]).parents
    torch.testing.assert_close(pulled["logits"], local_logits, atol=1e-5, rtol=1e-5)

    n_requests = len(hub.state.requests)
    offline = [sys.executable, script, CLI_REPO, "exp", image, root / "offline.pt", tests_dir, "--infer"]
    done = _run(offline, _env(hub, hf_home, offline=True), root)
    assert len(hub.state.requests) == n_requests, "HF_HUB_OFFLINE=1: nothing may reach the Hub"
    torch.testing.assert_close(torch.load(root / "offline.pt")["logits"], local_logits, atol=1e-5, rtol=1e-5)
    assert f"ANSWER:{local_answer}\n" in done.stdout
    assert "MISSING: Adapter me/never-pulled is not in the HF cache" in done.stdout
    assert str(hub_cache) in done.stdout


def test_infer_interactive_chat(trained, image, monkeypatch, capsys):
    args = ["infer", "--adapter", str(trained["out"]), "--image", str(image), "--max-new-tokens", "4"]
    assert cli([*args, "--prompt", PROMPT]) == 0
    single = capsys.readouterr().out.strip()
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{PROMPT}\nAnd the next one?\n\n"))
    assert cli(args) == 0
    replies = capsys.readouterr().out.strip().split("\n")
    assert len(replies) == 2 and replies[0] == single


def test_adapter_with_only_pickled_weights_is_refused(tmp_path, capsys):
    from vlm_sft.hub.adapters import resolve_adapter

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE_ID}))
    (folder / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        resolve_adapter(folder)
    assert cli(["merge", "--adapter", str(folder), "--out", str(tmp_path / "merged")]) == 1
    assert "adapter_model.safetensors" in capsys.readouterr().err and not (tmp_path / "merged").exists()


def test_infer_reports_a_missing_or_corrupt_image_without_traceback(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    for image in (tmp_path / "missing.png", corrupt):
        assert cli(["infer", "--adapter", str(tmp_path), "--image", str(image), "--prompt", "?"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: cannot read the image") and "Traceback" not in err
