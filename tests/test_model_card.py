"""The adapter's model card: metadata the Hub accepts, a body that says what was trained, a usage snippet that runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hub_server import validate_metadata
from tiny_adapter import digit_image, make_tiny_adapter
from trl import ModelConfig, ScriptArguments, SFTConfig

from vlm_sft.hub.model_card import (
    TEMPLATES,
    BaseModelIdError,
    adapter_card_values,
    build_adapter_card,
    build_merged_card,
    card_metadata,
    is_hub_dataset_id,
    is_hub_id,
    render_card,
    training_summary,
    usage_snippet,
)
from vlm_sft.training.config import VisionArguments


@pytest.fixture(scope="module")
def adapter(tiny_llava, tmp_path_factory) -> Path:
    return make_tiny_adapter(tiny_llava, tmp_path_factory.mktemp("card") / "adapter")


@pytest.fixture
def run_dir(adapter, tmp_path) -> Path:
    """A copy of the adapter folder a test may change."""
    return Path(shutil.copytree(adapter, tmp_path / "run"))


def _summary(run: Path) -> dict:
    return json.loads((run / "training_summary.json").read_text())


def _write_summary(run: Path, summary: dict) -> None:
    (run / "training_summary.json").write_text(json.dumps(summary))


def test_card_written_over_peft_readme_with_hub_metadata(adapter):
    text = (adapter / "README.md").read_text()
    assert "Model Card for Model ID" not in text, "PEFT's template card must be replaced"
    meta = card_metadata(adapter / "README.md")
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == "tiny-org/tiny-llava"
    assert meta["base_model_relation"] == "adapter"
    assert {"lora", "peft", "trl", "sft", "vision-language"} <= set(meta["tags"])
    assert "qlora" not in meta["tags"]
    assert "datasets" not in meta, "a local data file is not a Hub dataset id"
    assert validate_metadata(meta) == []  # the test Hub's checks, which mirror the Hub's


def test_body_reports_lora_training_and_results(adapter):
    text = (adapter / "README.md").read_text()
    config = json.loads((adapter / "adapter_config.json").read_text())
    params = json.loads((adapter / "trainable_parameters.json").read_text())
    assert "| r | 8 |" in text and "| lora_alpha | 16 |" in text and "| lora_dropout | 0.05 |" in text
    assert "language model only (`lora_target: attention`)" in text
    assert "| vision tower | frozen |" in text and "| projector | trained fully" in text
    # The target regex holds `|`, escaped so the table keeps its two columns.
    assert config["target_modules"].replace("|", "\\|") in text
    for line in text.splitlines():
        if line.startswith("| ") and "`" in line:
            assert len(re.findall(r"(?<!\\)\|", line)) in (3, 5), line
    assert f"Trainable: {params['percent']:.3f}%" in text
    # PEFT's convention (get_nb_trainable_parameters): the adapter's own parameters count in the whole.
    assert params["total"] > params["base_total"] and params["percent"] == round(
        100 * params["trainable"] / params["total"], 4
    )
    size = sum(f.stat().st_size for f in adapter.glob("adapter_model*.safetensors")) / 1e6
    assert f"Adapter size: {size:.2f} MB" in text
    assert "| final training loss (step 4) | 1.25 |" in text
    assert "| final eval loss (step 4) | 1.5 |" in text
    assert "| mean training loss over the run | 1.875 |" in text
    assert "| learning_rate | 0.0002 |" in text
    assert "4 per device x 2 accumulation x 1 processes = 8 samples per step" in text
    assert "None (LoRA)" in text
    assert "- transformers: " in text and "- peft: " in text and "- trl: " in text
    assert "8 conversations" in text
    assert "loss.png" not in text and "Evaluation" not in text  # neither exists yet


def test_loss_plot_and_eval_report_when_present(run_dir):
    from vlm_sft.evaluation.generate import format_table

    (run_dir / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    metrics = {"exact_match": 0.25, "token_f1": 0.5, "kinds": {"numeric": 4}, "json": None, "numeric": None}
    report = {
        "eval_file": "/data/eval.json",
        "n": 4,
        "models": [
            {"name": "base", "kind": "base", "metrics": {**metrics, "exact_match": 0.0}},
            {"name": "adapter", "kind": "adapter", "metrics": metrics},
        ],
        "examples": [],
        "worst": {},
    }
    (run_dir / "eval_report.json").write_text(json.dumps(report))
    text = str(build_adapter_card(run_dir, repo_id="me/tiny"))
    assert "![Training loss](loss.png)" in text
    assert "4 held-out examples (`eval.json`)" in text
    assert format_table(report) in text  # the eval module's own side-by-side table

    # A report of another shape still shows its numbers rather than breaking the card.
    (run_dir / "eval_report.json").write_text(json.dumps({"accuracy": 0.75, "detail": {"mae": 0.5}}))
    text = str(build_adapter_card(run_dir, repo_id="me/tiny"))
    assert "| accuracy | 0.75 |" in text and "| detail.mae | 0.5 |" in text


def test_local_base_path_is_refused_unless_a_hub_id_is_given(run_dir, tiny_llava):
    summary = _summary(run_dir)
    summary["hub_base_model_id"] = None
    _write_summary(run_dir, summary)
    assert not is_hub_id(str(tiny_llava)) and not is_hub_id(".cache/tiny-llava")
    with pytest.raises(BaseModelIdError, match="hub_base_model_id"):
        build_adapter_card(run_dir, repo_id="me/tiny")
    with pytest.raises(BaseModelIdError, match="not a Hub model id"):
        build_adapter_card(run_dir, repo_id="me/tiny", base_model="./models/llava")
    # The local card (no push yet) is still written, without a base_model the Hub would reject.
    meta = build_adapter_card(run_dir, require_hub_base=False).data.to_dict()
    assert "base_model" not in meta and "base_model_relation" not in meta
    meta = build_adapter_card(run_dir, repo_id="me/tiny", base_model="llava-hf/llava-1.5-7b-hf").data.to_dict()
    assert meta["base_model"] == "llava-hf/llava-1.5-7b-hf"


def test_datasets_hub_ids_only_and_license(run_dir, tmp_path):
    assert is_hub_dataset_id("HuggingFaceM4/ChartQA")
    assert not is_hub_dataset_id("digits/train.json") and not is_hub_dataset_id(str(tmp_path))
    card = build_adapter_card(run_dir, repo_id="me/tiny", datasets=["me/workbench-vqa"], license="apache-2.0")
    assert card.data.datasets == ["me/workbench-vqa"] and card.data.license == "apache-2.0"
    assert "[me/workbench-vqa](https://huggingface.co/datasets/me/workbench-vqa)" in str(card)
    with pytest.raises(ValueError, match="Hub dataset ids"):
        build_adapter_card(run_dir, repo_id="me/tiny", datasets=["data/train.jsonl"])

    # From the recipe: a Hub dataset id is kept, a local file is not.
    vision = VisionArguments(train_file=str(run_dir / "adapter_config.json"))
    summary = training_summary(
        ScriptArguments(dataset_name="me/workbench-vqa"),
        SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        ModelConfig(model_name_or_path="llava-hf/llava-1.5-7b-hf"),
        vision,
    )
    assert summary["datasets"] == ["me/workbench-vqa"] and summary["train_data"] == "adapter_config.json"
    assert str(tmp_path) not in json.dumps(summary)  # only file names of local data


def test_base_license_read_from_the_base_card(run_dir, tiny_llava, tmp_path):
    base = Path(shutil.copytree(tiny_llava, tmp_path / "base"))
    (base / "README.md").write_text("---\nlicense: llama2\n---\n# base\n")
    summary = _summary(run_dir)
    summary["base_model_name_or_path"] = str(base)
    _write_summary(run_dir, summary)
    assert build_adapter_card(run_dir, repo_id="me/tiny").data.license == "llama2"


def test_qlora_summary_tags_and_quantization(run_dir, tmp_path):
    model_args = ModelConfig(model_name_or_path="llava-hf/llava-1.5-7b-hf", load_in_4bit=True, dtype="bfloat16")
    model_args.bnb_4bit_quant_type = "nf4"
    summary = training_summary(
        ScriptArguments(),
        SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        model_args,
        VisionArguments(),
    )
    assert summary["quantization"]["bits"] == 4 and summary["quantization"]["quant_type"] == "nf4"
    assert "bitsandbytes" in summary["framework_versions"]
    _write_summary(run_dir, summary)
    card = build_adapter_card(run_dir, repo_id="me/tiny")
    assert "qlora" in card.data.tags and "lora" not in card.data.tags
    assert card.data.base_model == "llava-hf/llava-1.5-7b-hf"
    assert "QLoRA: base model loaded in 4-bit (nf4" in str(card) and "never into a 4-bit one" in str(card)


def test_usage_snippet_runs(adapter, tiny_llava, tmp_path, capsys):
    """The card's Python, with the Hub ids pointed at the local folders, loads base + adapter and answers."""
    text = (adapter / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert 'PeftModel.from_pretrained(base, "' in code and "apply_chat_template" in code
    image = digit_image(tmp_path / "photo.jpg")
    code = code.replace('"tiny-org/tiny-llava"', repr(str(tiny_llava))).replace('"photo.jpg"', repr(str(image)))
    code = code.replace("max_new_tokens=64", "max_new_tokens=4")
    torch.manual_seed(0)
    exec(compile(code, "card-snippet", "exec"), {})
    assert capsys.readouterr().out.strip() != ""


def test_usage_snippet_keeps_the_trained_system_prompt():
    code = usage_snippet("org/base", "me/adapter", system_prompt='Answer with one "word".')
    namespace: dict = {}
    messages_src = code[code.index("messages = [") : code.index("inputs =")]
    exec(messages_src, namespace)
    assert namespace["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": 'Answer with one "word".'}],
    }


def test_cards_are_rendered_from_the_templates_and_take_extra_sections(run_dir):
    """The text comes from hub/templates/*.md: its headings, in its order; a section can be added as a value."""
    template = (TEMPLATES / "adapter_card.md").read_text()
    fixed = [h for h in re.findall(r"^#+ (.+)$", template, flags=re.M) if "{" not in h]
    text = str(build_adapter_card(run_dir, repo_id="me/tiny"))
    assert [h for h in re.findall(r"^#+ (.+)$", text, flags=re.M) if h in fixed] == [h for h in fixed if h in text]
    assert {"Use it", "LoRA", "Quantization", "Results"} <= set(fixed)
    assert "{{" not in text and "{%" not in text and text.startswith("---\nbase_model: tiny-org/tiny-llava\n")

    data, values = adapter_card_values(run_dir, repo_id="me/tiny")
    values["extra_sections"] = [{"title": "Limitations", "body": "Digits only, on a white background."}]
    card = render_card("adapter_card.md", data, values)
    assert "\n## Limitations\n\nDigits only, on a white background.\n\n## Framework versions\n" in str(card)
    assert card.data.to_dict() == data.to_dict() and str(card).replace(
        "## Limitations\n\nDigits only, on a white background.\n\n", ""
    ) == text

    merged = str(build_merged_card(run_dir, adapter_ref="me/tiny", revision=None, base_model=None,
                                   dtype="bfloat16", out_ref="me/merged"))  # fmt: skip
    merged_template = (TEMPLATES / "merged_card.md").read_text()
    assert "## LoRA that was merged" in merged_template and "## LoRA that was merged" in merged
    assert "base_model_relation: merge" in merged and "{{" not in merged
