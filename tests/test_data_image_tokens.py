"""`vlm-sft data stats --processor / --recipe`: image tokens per image and per sample, longest samples, and how
many samples exceed the recipe's max_length, counted with the real (tiny) processors."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vlm_sft.cli import main as cli_main
from vlm_sft.modeling.resolution import ImageSettings, image_tokens

REPO = Path(__file__).resolve().parents[1]


def _subset(digits, tmp_path: Path, n: int = 12) -> list:
    """The first n digits samples (the image tokens of each image are counted with one processor call)."""
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(json.loads(Path(digits["train"]).read_text())[:n]))
    return [path, "--image-dir", digits["image_dir"]]


def _stats(capsys, *argv) -> tuple[int, dict | str, str]:
    code = cli_main(["data", "stats", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else out), err


def test_image_tokens_with_a_processor(capsys, tiny_llava, digits, tmp_path):
    from transformers import AutoConfig

    per_image = image_tokens(AutoConfig.from_pretrained(tiny_llava), ImageSettings())[0]
    data = _subset(digits, tmp_path)
    code, stats, _ = _stats(capsys, "--json", *data, "--processor", tiny_llava)
    assert code == 0
    tokens = stats["image_tokens"]
    images = [int(k) for k, v in stats["images_per_sample"].items() for _ in range(v)]
    assert tokens["per_image"]["max"] == tokens["per_image"]["p50"] == per_image  # fixed for LLaVA
    assert tokens["per_sample"]["max"] == per_image * max(images)
    longest = tokens["longest_samples"]
    assert len(longest) == 5 and longest[0]["tokens"] == stats["length"]["max"]
    assert longest[0]["sample"].startswith("sample ") and tokens["over_max_length"] is None
    code, text, _ = _stats(capsys, *data, "--processor", tiny_llava)
    assert f"image tokens/image   p50 {per_image}" in text and "no max_length" in text


def test_recipe_resolution_and_max_length(capsys, tiny_dir, digits, tmp_path):
    """The recipe's keys are applied and its max_length counted; the processor comes from --processor here (the
    recipe's own model is a Hub id this machine does not have)."""
    recipe = yaml.safe_load((REPO / "recipes" / "gemma3_4b_qlora.yaml").read_text())
    gemma = tiny_dir("gemma3")
    common = [*_subset(digits, tmp_path), "--processor", gemma]
    code, stats, _ = _stats(capsys, "--json", *common, "--recipe", REPO / "recipes" / "gemma3_4b_qlora.yaml")
    assert code == 0 and stats["image_tokens"]["per_image"]["max"] == 4  # the tiny Gemma 3 pools to 4 tokens
    lengths = sorted(x["tokens"] for x in stats["image_tokens"]["longest_samples"])
    cap = lengths[0] - 1  # the five longest are all longer
    path = tmp_path / "capped.yaml"
    path.write_text(yaml.safe_dump({**recipe, "max_length": cap}))
    code, stats, _ = _stats(capsys, "--json", *common, "--recipe", path)
    over = stats["image_tokens"]["over_max_length"]
    assert code == 0 and stats["image_tokens"]["max_length"] == cap and over >= 5


def test_recipe_key_the_family_lacks_is_one_error_line(capsys, tiny_dir, digits, tmp_path):
    qwen_recipe = REPO / "recipes" / "qwen2_5_vl_7b_qlora.yaml"
    argv = [*_subset(digits, tmp_path), "--processor", tiny_dir("gemma3")]
    code, _, err = _stats(capsys, *argv, "--recipe", qwen_recipe)
    assert code == 2
    assert "image_min_pixels is not supported by the gemma3 family" in err and "Traceback" not in err
