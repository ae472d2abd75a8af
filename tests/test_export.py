"""`vlm-sft export --for vllm`: base with the trained projector merged in + a language-model-only LoRA, checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_adapter import make_tiny_adapter

from vlm_sft.cli import main as cli


@pytest.fixture(scope="module")
def adapter(tiny_llava, tmp_path_factory) -> Path:
    return make_tiny_adapter(tiny_llava, tmp_path_factory.mktemp("export") / "adapter", seed=3)


@pytest.fixture(scope="module")
def vision_adapter(tiny_llava, tmp_path_factory) -> Path:
    """LoRA on the language model and the vision tower, projector trained: what vLLM cannot load as it is."""
    from trl import ModelConfig

    from vlm_sft.modeling.setup import apply_lora, load_model
    from vlm_sft.training.config import VisionArguments

    args = ModelConfig(model_name_or_path=str(tiny_llava), dtype="float32", use_peft=True, lora_r=4, lora_alpha=8)
    model, parts = load_model(args)
    model = apply_lora(model, parts, args, VisionArguments(lora_target="qv", lora_on_vision_tower=True))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    out = tmp_path_factory.mktemp("export-vision") / "adapter"
    model.save_pretrained(out)
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(tiny_llava).save_pretrained(out)
    return out


def _export(adapter: Path, out: Path, *extra: str) -> int:
    args = ["export", "--for", "vllm", str(adapter), "--out", str(out), "--dtype", "float32"]
    return cli([*args, "--check-max-new-tokens", "8", *extra])


def _keys_outside_lm(keys) -> list[str]:
    return [k for k in keys if ".language_model." not in k or ".lora_" not in k]


def test_export_for_vllm_splits_and_checks(adapter, tiny_llava, digits, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _export(adapter, out, "--eval-file", str(digits["eval"]), "--image-dir", str(digits["image_dir"])) == 0
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and check["n"] == 8 and check["identical"] == 8 and check["max_abs_logit_diff"] < 1e-4
    assert "export check: 8/8 answers identical" in capsys.readouterr().out
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and config["base_model_name_or_path"] == str((out / "base").resolve())
    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    assert lora and not _keys_outside_lm(lora)  # vLLM: LoRA on the language model, nothing else
    original = load_file(adapter / "adapter_model.safetensors")
    assert {k: v for k, v in original.items() if ".lora_" in k}.keys() == lora.keys()
    # The base copy holds the trained projector and the untouched language model.
    exported = load_file(out / "base" / "model.safetensors")
    base = load_file(tiny_llava / "model.safetensors")
    projector = [k for k in original if "multi_modal_projector" in k]
    assert projector
    for key in projector:
        name = key.removeprefix("base_model.model.model.")  # saved in the checkpoint layout
        torch.testing.assert_close(exported[name], original[key])
        assert not torch.equal(exported[name], base[name])
    for name in base:
        if "multi_modal_projector" not in name:
            assert torch.equal(exported[name], base[name]), name
    assert (out / "base" / "chat_template.jinja").is_file() and (out / "adapter" / "chat_template.jinja").is_file()
    assert "vllm serve" in (out / "README.md").read_text()


def test_export_merges_vision_tower_lora_into_the_base(vision_adapter, tmp_path):
    out = tmp_path / "exp"
    assert _export(vision_adapter, out, "--check-n", "4") == 0
    assert json.loads((out / "export_check.json").read_text())["passed"]
    lora = load_file(out / "adapter" / "adapter_model.safetensors")
    assert lora and not _keys_outside_lm(lora)
    assert any("vision_tower" in k for k in load_file(vision_adapter / "adapter_model.safetensors"))
    targets = json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert targets and all(t.startswith("model.language_model.") for t in targets)


def test_export_that_drops_the_projector_fails_its_check(adapter, tmp_path, capsys, monkeypatch):
    from vlm_sft.hub import export

    split = export._split_model

    def without_projector(model, language_model):
        base, state, config = split(model, language_model)
        with torch.no_grad():  # as if the trained projector had not been merged in
            for param in base.get_submodule("model.multi_modal_projector").parameters():
                param.mul_(0.0)
        return base, state, config

    monkeypatch.setattr(export, "_split_model", without_projector)
    out = tmp_path / "exp"
    assert _export(adapter, out, "--check-n", "4") == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: export check failed: the export answers") and "of 4 check questions" in err
    assert not out.exists() and (adapter / "adapter_model.safetensors").is_file()


def test_export_refuses_bad_input(adapter, tmp_path, capsys):
    assert _export(tmp_path / "missing", tmp_path / "a") == 1
    assert "error: " in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert _export(adapter, tmp_path / "full", "--no-check") == 1
    assert "is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli(["export", "--for", "tgi", str(adapter), "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2


def test_cards_say_which_serving_paths_apply(adapter):
    from vlm_sft.hub.serving import serving_paragraph

    card = (adapter / "README.md").read_text()  # written by the training card builder
    assert "## Serving" in card and "projector trained, which they do not load" in card
    assert "`vlm-sft export --for vllm`" in card
    lm_only = serving_paragraph({"target_modules": r"model\.language_model\..*\.(q_proj|v_proj)"}, {})
    assert "loads as it is (multi-LoRA)" in lm_only and "export" not in lm_only
    vision = serving_paragraph({"target_modules": r"(model\.language_model\..*|model\.vision_tower\..*)"}, {})
    assert "LoRA on the vision tower, which they do not load" in vision
    assert "not supported (DoRA)" in serving_paragraph({"use_dora": True, "modules_to_save": ["x"]}, {})


def test_serving_doc_commands_parse():
    import re
    import shlex

    from vlm_sft.cli import parse_command

    doc = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", doc, flags=re.S)
    commands = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    ours = [shlex.split(c) for c in commands if c.startswith("vlm-sft ")]
    assert {c[1] for c in ours} >= {"infer", "export"}
    for words in ours:
        parse_command(words[1:])  # argparse exits on an unknown flag or a missing argument
