"""Every family's recipe trains end to end on its family's tiny model, and its image-resolution keys reach the
processor saved in output_dir; the token arithmetic the estimator uses matches the real processors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlm_sft.modeling.resolution import ImageSettings, image_tokens

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# recipe -> the tiny family it is trained on, and overrides that scale its resolution keys to the tiny geometry
# (32 px tiles instead of 364/384 px: the recipe's 768 px edge would make 577 tiny tiles).
FAMILY_RECIPES: dict[str, tuple[str, list[str]]] = {
    "llava_qlora.yaml": ("llava", []),
    "llava_next_mistral_7b_qlora.yaml": ("llava_next", []),
    "qwen2_5_vl_7b_qlora.yaml": ("qwen2_5_vl", []),
    "qwen3_vl_4b_lora.yaml": ("qwen3_vl", []),
    "gemma3_4b_qlora.yaml": ("gemma3", []),
    "smolvlm2_2b_lora.yaml": ("smolvlm", ["--image_longest_edge", "64", "--max_image_tokens", "20"]),
    "idefics3_8b_qlora.yaml": ("idefics3", ["--image_longest_edge", "64", "--max_image_tokens", "20"]),
    "paligemma2_3b_lora.yaml": ("paligemma", []),
}
# Tiny processors of these families load through a trust_remote_code shim (no torchvision here; tiny_families.py).
SHIMMED = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm"}


def test_every_model_recipe_is_trained_here():
    found = {p.name for p in (REPO / "recipes").glob("*.yaml")} - {"quickstart.yaml"}
    assert found == set(FAMILY_RECIPES)


def _tiny(tiny_dir, tiny_llava, family: str) -> Path:
    return tiny_llava if family == "llava" else tiny_dir(family)


@pytest.mark.parametrize("recipe", sorted(FAMILY_RECIPES))
def test_recipe_trains_on_its_tiny_family(recipe, tiny_dir, tiny_llava, digits, tmp_path):
    """`accelerate launch scripts/sft_vlm.py recipes/<r>.yaml` with the recipe's own quantization, LoRA and
    resolution keys, on the tiny model of its family: a few steps on CPU, an adapter and the processor saved."""
    from transformers import AutoProcessor

    family, scaled = FAMILY_RECIPES[recipe]
    model = _tiny(tiny_dir, tiny_llava, family)
    out = tmp_path / "out"
    command = [BIN / "accelerate", "launch", "--num_processes", "1", REPO / "scripts/sft_vlm.py"]
    command += [REPO / "recipes" / recipe, "--model_name_or_path", model, "--use_cpu", "true"]
    command += ["--train_file", digits["train"], "--image_dir", digits["image_dir"], "--eval_file", ""]
    command += ["--output_dir", out, "--max_steps", "2", "--per_device_train_batch_size", "2"]
    command += ["--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--save_strategy", "no"]
    command += ["--logging_steps", "1", *scaled]
    if family in SHIMMED:
        command += ["--trust_remote_code", "true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(c) for c in command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (out / "adapter_model.safetensors").is_file()
    # The processor eval / infer / merge load from output_dir carries the recipe's resolution keys.
    image_processor = AutoProcessor.from_pretrained(out, trust_remote_code=family in SHIMMED).image_processor
    if family in ("qwen2_5_vl", "qwen3_vl"):
        assert image_processor.size["longest_edge"] == {"qwen2_5_vl": 1003520, "qwen3_vl": 1048576}[family]
    if family in ("idefics3", "smolvlm"):
        assert image_processor.size["longest_edge"] == 64 and image_processor.do_image_splitting


def test_a_resolution_key_the_family_lacks_is_a_recipe_error(tiny_dir, digits, tmp_path, capsys):
    from vlm_sft.training.train import main

    argv = [str(REPO / "recipes" / "qwen2_5_vl_7b_qlora.yaml"), "--model_name_or_path", str(tiny_dir("qwen2_5_vl"))]
    argv += ["--train_file", str(digits["train"]), "--image_dir", str(digits["image_dir"]), "--eval_file", ""]
    argv += ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--trust_remote_code", "true"]
    assert main([*argv, "--image_longest_edge", "512"]) == 2
    err = capsys.readouterr().err
    assert "image_longest_edge is not supported by the qwen2_5_vl family" in err and "Traceback" not in err
    assert main([*argv, "--image_max_pixels", str(4096 * 28 * 28), "--max_image_tokens", "100"]) == 2
    assert "max_image_tokens=100: the qwen2_5_vl family gives up to 4096 tokens" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def _count(processor, image: Image.Image) -> int:
    """Image tokens the real processor puts in the text for one image."""
    text = "hi"  # PaliGemma has no chat template: its processor puts the image tokens before the text itself
    if processor.chat_template:
        content = [{"type": "image"}, {"type": "text", "text": "hi"}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
    ids = processor(text=[text], images=[[image]], return_tensors="pt")["input_ids"][0].tolist()
    # Gemma 3's processor names its begin-of-image marker `image_token`; the expanded tokens are the tokenizer's
    token = getattr(processor.tokenizer, "image_token", None) or getattr(processor, "image_token", None) or "<image>"
    return ids.count(processor.tokenizer.convert_tokens_to_ids(token))


@pytest.mark.parametrize(
    ("family", "settings"),
    [
        ("qwen2_5_vl", ImageSettings(image_min_pixels=28 * 28 * 4, image_max_pixels=28 * 28 * 30)),
        ("qwen3_vl", ImageSettings(image_min_pixels=32 * 32 * 4, image_max_pixels=32 * 32 * 12)),
        ("idefics3", ImageSettings(image_longest_edge=96, image_splitting=True)),
        ("idefics3", ImageSettings(image_splitting=False)),
        ("smolvlm", ImageSettings(image_longest_edge=64)),
        ("gemma3", ImageSettings()),
        ("paligemma", ImageSettings()),
    ],
)
def test_image_token_arithmetic_matches_the_processor(family, settings, tiny_dir):
    """The estimator's tokens per image (vlm_sft.modeling.resolution) = what the family's processor produces,
    with the settings applied the way training applies them, for photos of several shapes."""
    from transformers import AutoConfig, AutoProcessor

    from vlm_sft.modeling.resolution import configure_processor

    folder = tiny_dir(family)
    config = AutoConfig.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=family in SHIMMED)
    configure_processor(processor, config, settings)
    for size in ((640, 480), (200, 900), (50, 50)):
        image = Image.new("RGB", size, (120, 60, 30))
        assert _count(processor, image) == image_tokens(config, settings, size)[0], size


def test_workbench_images_are_drawn_on_first_use(tmp_path, monkeypatch):
    """A fresh clone has no examples/workbench/images (git-ignored drawings): training draws them first."""
    import shutil

    from vlm_sft.quickstart import workbench

    copy = tmp_path / "examples" / "workbench"
    copy.mkdir(parents=True)
    for name in ("train.json", "eval.json", "make_images.py"):
        shutil.copy(workbench.WORKBENCH / name, copy / name)
    monkeypatch.setattr(workbench, "WORKBENCH", copy)
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    shutil.copy(copy / "train.json", elsewhere / "train.json")
    shutil.copy(copy / "make_images.py", elsewhere / "make_images.py")
    assert not workbench.ensure_workbench_images(str(elsewhere / "train.json"))  # a user's folder: never run
    assert not (elsewhere / "images").exists()
    assert workbench.ensure_workbench_images(str(copy / "train.json"), str(copy / "eval.json"))
    from vlm_sft.data.loading import load_splits
    from vlm_sft.training.config import VisionArguments

    train, evaluation = load_splits(
        VisionArguments(train_file=str(copy / "train.json"), eval_file=str(copy / "eval.json"))
    )
    assert len(train) >= 20 and len(evaluation) >= 1  # every image the conversations name now exists
    assert not workbench.ensure_workbench_images(str(copy / "train.json"))  # drawn once


def test_readme_family_table_matches_the_estimator(capsys):
    """The README's table (family, recipe, image tokens, memory) is what `vlm-sft estimate` prints today."""
    import json
    import re

    from vlm_sft.cli import main as cli_main

    rows = re.findall(r"^\| [^|]+ \| (\S+) \| `(\w+\.yaml)` [^|]*\| [^|]*\| ([\d.]+) GiB \|$",
                      (REPO / "README.md").read_text(), flags=re.M)  # fmt: skip
    assert {recipe for _, recipe, _ in rows} == set(FAMILY_RECIPES)
    for model, recipe, gib in rows:
        assert cli_main(["estimate", model, "--recipe", str(REPO / "recipes" / recipe), "--json"]) == 0
        total = json.loads(capsys.readouterr().out)["total_gib"]["checkpointing_on"]
        assert f"{total:.1f}" == gib, (recipe, total)
        assert f"{total:.1f} GiB" in (REPO / "recipes" / recipe).read_text() or recipe == "llava_qlora.yaml"
