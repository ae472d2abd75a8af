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


# ---------------------------------------------------------------------------------------------- self-check


def _sha(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_merge_checks_itself_and_a_reload_answers_like_the_adapter(adapter, digits, tmp_path, capsys):
    from vlm_sft.evaluation.generate import generate_answers, load_eval_set

    out = tmp_path / "merged"
    args = ["merge", "--adapter", str(adapter), "--out", str(out), "--dtype", "float32"]
    args += ["--eval-file", str(digits["eval"]), "--image-dir", str(digits["image_dir"]), "--check-n", "6"]
    assert cli(args) == 0
    check = json.loads((out / "merge_check.json").read_text())
    assert check["n"] == 6 and check["passed"] and check["differ"] == 0 and check["dtype"] == "float32"
    assert check["identical"] + check["within_rounding"] == 6 and check["max_abs_logit_diff"] < 1e-3
    assert str(digits["eval"]) in check["eval_set"]
    assert "## Merge check (passed)" in (out / "README.md").read_text()
    assert "merge check: " in capsys.readouterr().out
    # An independent reload (plain transformers, no vlm-sft loader) answers held-out digits like base + adapter.
    rows = load_eval_set(digits["eval"], digits["image_dir"], limit=6).rows
    processor = AutoProcessor.from_pretrained(out)
    merged = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForImageTextToText.from_pretrained(
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"], dtype=torch.float32
    )
    adapted = PeftModel.from_pretrained(base, adapter)
    expected = generate_answers(adapted, processor, rows, max_new_tokens=8)
    assert generate_answers(merged, processor, rows, max_new_tokens=8) == expected


def test_tampered_merge_fails_the_check_and_leaves_the_adapter(adapter, tmp_path, capsys, monkeypatch):
    from peft.tuners.tuners_utils import BaseTuner

    original = BaseTuner.merge_and_unload

    def tampered(self, *args, **kwargs):
        merged = original(self, *args, **kwargs)
        with torch.no_grad():  # one merged weight off by more than any rounding
            weight = merged.get_output_embeddings().weight
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
        return merged

    monkeypatch.setattr(BaseTuner, "merge_and_unload", tampered)
    before = _sha(adapter)
    out = tmp_path / "merged"
    assert cli(["merge", "--adapter", str(adapter), "--out", str(out), "--dtype", "float32", "--check-n", "4"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: merge check failed:") and "of 4 check questions differently" in err
    assert not out.exists() and _sha(adapter) == before
    (failed,) = tmp_path.glob("merged.failed-check-*")
    check = json.loads((failed / "merge_check.json").read_text())
    assert not check["passed"] and check["differ"] >= 1 and check["max_abs_logit_diff"] > 0.1
    assert f"answers {check['differ']} of 4" in err


def test_merge_check_bad_arguments(adapter, tmp_path, capsys):
    out = tmp_path / "m"
    assert cli(["merge", "--adapter", str(adapter), "--out", str(out), "--check-n", "0"]) == 2
    assert "--check-n must be at least 1" in capsys.readouterr().err
    assert cli(["merge", "--adapter", str(adapter), "--out", str(out), "--eval-file", str(tmp_path / "no.json")]) == 1
    assert "error: the check's questions:" in capsys.readouterr().err
    assert not out.exists()


def test_rounding_tie_only_excuses_near_ties():
    from vlm_sft.evaluation.agreement import rounding_tie

    def output(logits: list[list[float]], ids: list[int]):
        return torch.tensor(logits), torch.tensor(ids)

    ref = output([[5.0, 1.0, 0.0], [0.0, 2.00, 1.99]], [0, 1])
    near = output([[5.0, 1.0, 0.0], [0.0, 1.99, 2.00]], [0, 2])  # parts at a tie bf16 rounding can flip
    assert rounding_tie(ref, near, "bfloat16")
    assert not rounding_tie(ref, near, "float32")  # float32 rounds a thousand times finer
    far = output([[5.0, 1.0, 0.0], [0.0, 1.0, 3.0]], [0, 2])  # the candidate prefers its token by a margin
    assert not rounding_tie(ref, far, "bfloat16")
    assert not rounding_tie(ref, output([[5.0, 1.0, 0.0]], [0]), "bfloat16")
