"""`vlm-sft merge`: the adapter merged into a 16-bit base gives the logits of base + adapter; never into 4-bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from tiny_adapter import chat_inputs, digit_image, make_tiny_adapter
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlm_sft.cli import main as cli
from vlm_sft.hub.adapters import load_adapter_processor, merge_adapter
from vlm_sft.hub.model_card import card_metadata


@pytest.fixture(scope="module")
def adapter(tiny_llava, tmp_path_factory) -> Path:
    return make_tiny_adapter(tiny_llava, tmp_path_factory.mktemp("merge") / "adapter", seed=1)


@pytest.fixture(scope="module")
def reference(adapter, tiny_llava, tmp_path_factory) -> dict:
    """Inputs, and the logits of the base alone and of base + adapter (unmerged, fp32)."""
    processor = AutoProcessor.from_pretrained(adapter)
    inputs = chat_inputs(processor, digit_image(tmp_path_factory.mktemp("img") / "x.png"))
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
        adapted = PeftModel.from_pretrained(base, adapter).eval()
        adapter_logits = adapted(**inputs).logits
    assert (adapter_logits - base_logits).abs().max() > 1.0, "the test adapter must change the outputs"
    return {"inputs": inputs, "base": base_logits, "adapter": adapter_logits}


def _logits(folder: Path, inputs) -> tuple[torch.Tensor, torch.nn.Module]:
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**inputs).logits.float(), model


def test_merge_fp32_equals_base_plus_adapter(adapter, reference, tmp_path):
    out = merge_adapter(adapter, tmp_path / "merged", dtype="float32")
    logits, model = _logits(out, reference["inputs"])
    torch.testing.assert_close(logits, reference["adapter"], atol=1e-4, rtol=1e-4)
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in model.named_parameters())
    weights = {p.name for p in out.glob("*.safetensors")}
    assert weights == {"model.safetensors"} and not (out / "adapter_config.json").exists()
    # Processor and chat template travel with the merged model: the training template, applied here to an
    # adapter saved with the base's (as before it existed), and the card says so.
    assert (out / "chat_template.jinja").read_text() == load_adapter_processor(adapter).chat_template
    assert "</s>" in (out / "chat_template.jinja").read_text()
    assert "## Chat template" in (out / "README.md").read_text()
    assert (
        AutoProcessor.from_pretrained(out).tokenizer.get_vocab()
        == AutoProcessor.from_pretrained(adapter).tokenizer.get_vocab()
    )
    meta = card_metadata(out / "README.md")
    assert meta["base_model_relation"] == "merge" and meta["base_model"] == "tiny-org/tiny-llava"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"


def test_merge_cli_bf16(adapter, reference, tmp_path, capsys):
    out = tmp_path / "merged-bf16"
    assert cli(["merge", "--adapter", str(adapter), "--out", str(out)]) == 0  # --dtype bfloat16 is the default
    assert json.loads((out / "config.json").read_text())["text_config"]["dtype"] == "bfloat16"
    logits, model = _logits(out, reference["inputs"])
    assert model.dtype == torch.bfloat16
    # bf16 rounding moves logits by a few hundredths; the adapter moves them by more than 1.
    error = (logits - reference["adapter"]).abs().max()
    assert error < 0.1 * (reference["adapter"] - reference["base"]).abs().max(), error
    assert "in bfloat16 (never in 4-bit" in (out / "README.md").read_text()
    assert "merged model:" in capsys.readouterr().out


def test_merge_refuses_quantized_base_and_bad_targets(adapter, tiny_llava, tmp_path):
    quantized = Path(shutil.copytree(tiny_llava, tmp_path / "base-4bit"))
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="pre-quantized"):
        merge_adapter(adapter, tmp_path / "m1", base=str(quantized))
    with pytest.raises(ValueError, match="never a quantized base"):
        merge_adapter(adapter, tmp_path / "m2", dtype="int8")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError):
        merge_adapter(adapter, tmp_path / "full")
    assert cli(["merge", "--adapter", str(tmp_path / "missing"), "--out", str(tmp_path / "m3")]) == 1


def test_merge_that_fails_midway_leaves_no_folder(adapter, tmp_path, monkeypatch):
    from vlm_sft.hub import adapters as hub

    def crash(*args, **kwargs):
        raise RuntimeError("crash while writing the card")

    monkeypatch.setattr(hub, "build_merged_card", crash)
    with pytest.raises(RuntimeError, match="crash"):
        merge_adapter(adapter, tmp_path / "merged", dtype="float32")
    assert list(tmp_path.iterdir()) == [], "neither the output folder nor the partial one is left behind"
