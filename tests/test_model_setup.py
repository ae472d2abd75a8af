"""Model setup on the tiny LLaVA: LoRA on the language model only, projector trained fully, vision tower frozen."""

from __future__ import annotations

import pytest
import torch
from trl import ModelConfig

from vlm_sft.collator import VisionSFTCollator
from vlm_sft.modeling.parameters import trainable_parameters
from vlm_sft.modeling.setup import COMPONENTS, apply_lora, load_model, lora_target_regex, quantization_config
from vlm_sft.training.config import VisionArguments


def _model_args(path, **kw) -> ModelConfig:
    kw.setdefault("dtype", "float32")
    return ModelConfig(model_name_or_path=str(path), use_peft=True, lora_r=8, lora_alpha=16, **kw)


def _setup(path, vision: VisionArguments | None = None, **kw):
    model, parts = load_model(_model_args(path, **kw))
    return apply_lora(model, parts, _model_args(path, **kw), vision or VisionArguments()), parts


def _lora_modules(model) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A")]


def test_lora_only_on_language_model_and_projector_fully_trained(tiny_llava):
    model, parts = _setup(tiny_llava, VisionArguments(lora_target="qv"))
    lora = _lora_modules(model)
    assert lora and all(".language_model." in n for n in lora)
    assert {n.rsplit(".", 1)[-1] for n in lora} == {"q_proj", "v_proj"}
    report = trainable_parameters(model, parts)
    comps = report["components"]
    assert comps["vision_tower"]["trainable"] == 0 and comps["vision_tower"]["total"] > 0
    assert comps["projector"]["trainable"] == comps["projector"]["total"] > 0
    assert comps["projector"]["percent"] == 100.0
    assert comps["lm_head"]["trainable"] == 0
    # q and v of every layer: r * (d_in + d_out) each.
    config = model.base_model.model.config.text_config
    per_layer = 2 * 8 * (config.hidden_size + config.hidden_size)
    assert comps["language_model"]["trainable"] == config.num_hidden_layers * per_layer
    assert report["trainable"] == comps["projector"]["trainable"] + comps["language_model"]["trainable"]
    assert report["base_total"] == sum(
        p.numel() for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n
    )
    # PEFT's convention (its print_trainable_parameters): the adapter's parameters count in the whole.
    assert (report["trainable"], report["total"]) == model.get_nb_trainable_parameters()
    assert report["total"] == sum(p.numel() for p in model.parameters()) > report["base_total"]
    assert report["percent"] == round(100 * report["trainable"] / report["total"], 4)


def test_presets_and_vision_opt_in(tiny_llava):
    model, _ = _setup(tiny_llava, VisionArguments(lora_target="all-linear"))
    assert {n.rsplit(".", 1)[-1] for n in _lora_modules(model)} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    model, _ = _setup(tiny_llava, VisionArguments(lora_target="qv", lora_on_vision_tower=True))
    vision = [n for n in _lora_modules(model) if ".vision_tower." in n]
    assert vision and {n.rsplit(".", 1)[-1] for n in vision} == {"q_proj", "v_proj"}
    assert not any(".multi_modal_projector." in n for n in _lora_modules(model))


@pytest.mark.parametrize("value", ["q_proj", ["q_proj", "v_proj"], ["self_attn.q_proj"]])
def test_target_names_match_by_name_inside_the_language_model(tiny_llava, value):
    model, _ = _setup(tiny_llava, lora_target_modules=value)
    lora = _lora_modules(model)
    names = {value} if isinstance(value, str) else {v.rsplit(".", 1)[-1] for v in value}
    assert lora and all(".language_model." in n for n in lora)
    assert {n.rsplit(".", 1)[-1] for n in lora} == names
    config = model.base_model.model.config.text_config
    assert len(lora) == len(names) * config.num_hidden_layers


def test_target_names_reach_the_vision_tower_only_when_asked(tiny_llava):
    model, _ = _setup(tiny_llava, VisionArguments(lora_on_vision_tower=True), lora_target_modules="q_proj")
    lora = _lora_modules(model)
    assert any(".vision_tower." in n for n in lora) and any(".language_model." in n for n in lora)
    assert {n.rsplit(".", 1)[-1] for n in lora} == {"q_proj"}


def test_target_regex_matches_full_paths(tiny_llava):
    model, _ = _setup(tiny_llava, lora_target_modules=r"model\.language_model\.layers\.0\.self_attn\.(q|k)_proj")
    assert sorted(n.split("model.language_model.", 1)[1] for n in _lora_modules(model)) == [
        "layers.0.self_attn.k_proj",
        "layers.0.self_attn.q_proj",
    ]


def test_target_regex_that_hits_the_vision_tower_is_refused(tiny_llava):
    from vlm_sft.modeling.setup import LoraTargetError

    with pytest.raises(LoraTargetError, match="vision-tower modules"):
        _setup(tiny_llava, lora_target_modules=r".*\.q_proj")


@pytest.mark.parametrize("value", ["qproj", ["nope", "nada"], r"model\.language_model\..*\.query"])
def test_target_that_matches_nothing_lists_the_language_models_linear_layers(tiny_llava, value):
    from vlm_sft.modeling.setup import LoraTargetError

    with pytest.raises(LoraTargetError) as err:
        _setup(tiny_llava, lora_target_modules=value)
    message = str(err.value)
    assert "matches no linear layer" in message and "\n" not in message
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message
    assert "fc1" not in message, "vision-tower names are not offered"


def test_target_list_with_a_regex_and_peft_all_linear_are_refused(tiny_llava):
    from vlm_sft.modeling.setup import LoraTargetError

    with pytest.raises(LoraTargetError, match="a list holds module names"):
        _setup(tiny_llava, lora_target_modules=["q_proj", ".*v_proj"])
    with pytest.raises(LoraTargetError, match="lora_target: all-linear"):
        _setup(tiny_llava, lora_target_modules="all-linear")


def test_unknown_family_is_refused_not_guessed():
    from transformers import LlamaConfig

    from vlm_sft.modeling.setup import components_for

    with pytest.raises(ValueError, match="Unsupported model family 'llama'"):
        components_for(LlamaConfig())
    from transformers import Blip2Config

    # A vision-language family we have not mapped: its parts are listed so a person can map them.
    with pytest.raises(ValueError, match=r"will not guess\. Its modules: vision_model, .*qformer.*language_model"):
        components_for(Blip2Config())


def test_4bit_keeps_vision_projector_and_head_in_16_bit_with_root_paths():
    config = quantization_config(
        ModelConfig(load_in_4bit=True, use_bnb_nested_quant=True, dtype="bfloat16"), COMPONENTS["llava"]
    )
    assert config.llm_int8_skip_modules == ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_regex_scope():
    import re

    regex = lora_target_regex(COMPONENTS["qwen2_vl"], "qv", on_vision_tower=True)
    assert re.fullmatch(regex, "model.language_model.layers.0.self_attn.q_proj")
    assert re.fullmatch(regex, "model.visual.blocks.0.attn.qkv")
    assert not re.fullmatch(regex, "model.visual.merger.mlp.0")
    assert not re.fullmatch(lora_target_regex(COMPONENTS["llava"], "qv"), "model.vision_tower.a.self_attn.q_proj")


def _train_steps(model, batch, steps: int = 3) -> None:
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad()


@pytest.mark.parametrize(
    "quant", [{}, {"load_in_4bit": True, "use_bnb_nested_quant": True, "dtype": "bfloat16"}], ids=["lora", "qlora"]
)
def test_training_changes_lora_and_projector_only_even_after_an_eval_pass(tiny_llava, llava_processor, digits, quant):
    from vlm_sft.data.loading import load_conversations

    model, _ = _setup(tiny_llava, VisionArguments(lora_target="attention"), **quant)
    ds = load_conversations(digits["train"], digits["image_dir"])
    batch = VisionSFTCollator(llava_processor)([ds[i] for i in range(8)])
    # An evaluation-style no-grad forward first: on bitsandbytes' CPU path it used to repack the
    # 4-bit weights and silently break later gradients.
    model.eval()
    with torch.no_grad():
        model(**batch)
    before = {n: p.detach().clone().float() for n, p in model.named_parameters()}
    _train_steps(model, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach().float())}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and lora <= changed, f"LoRA weights that did not learn: {sorted(lora - changed)[:5]}"
    projector = {n for n in trainable if "multi_modal_projector.modules_to_save" in n}
    assert projector and projector <= changed, "the projector learns (gradients flow through every LM layer)"
    assert changed <= trainable, f"frozen weights changed: {sorted(changed - trainable)[:5]}"
    assert all(("lora_" in n or "modules_to_save" in n) for n in trainable)


def test_qlora_forward_and_gradients_are_unchanged_by_an_eval_pass(tiny_llava, llava_processor, digits):
    """bitsandbytes' CPU path repacks 4-bit weights on a no-grad eval forward; training must not notice."""
    from vlm_sft.data.loading import load_conversations

    quant = {"load_in_4bit": True, "use_bnb_nested_quant": True, "dtype": "bfloat16", "lora_dropout": 0.0}
    model, _ = _setup(tiny_llava, VisionArguments(lora_target="attention"), **quant)
    ds = load_conversations(digits["train"], digits["image_dir"])
    batch = VisionSFTCollator(llava_processor)([ds[i] for i in range(8)])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)

    def loss_and_grads():
        model.train()
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_before, grads_before = loss_and_grads()
    model.eval()
    with torch.no_grad():
        eval_loss = model(**batch).loss.item()
    loss_after, grads_after = loss_and_grads()
    assert eval_loss == pytest.approx(loss_before, abs=1e-6)
    assert loss_after == pytest.approx(loss_before, abs=1e-6)
    assert grads_after.keys() == grads_before.keys() and any("lora_A" in n for n in grads_after)
    for name, grad in grads_before.items():
        torch.testing.assert_close(grads_after[name], grad, msg=f"gradient of {name} changed after eval")


FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "gemma3", "paligemma"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_lora_scope_and_report(tiny_dir, family, tmp_path):
    from vlm_sft.modeling.parameters import format_table, write_report

    path = tiny_dir(family)
    args = _model_args(path)
    model, parts = load_model(args, trust_remote_code=True)
    model = apply_lora(model, parts, args, VisionArguments(lora_target="attention"))
    lora = _lora_modules(model)
    assert lora and all(f"{parts.language_model}." in n for n in lora), family
    report = trainable_parameters(model, parts)
    comps = report["components"]
    assert comps["vision_tower"]["trainable"] == 0 < comps["vision_tower"]["total"]
    assert comps["projector"]["trainable"] == comps["projector"]["total"] > 0
    assert comps["language_model"]["trainable"] == sum(report["lora_targets"].values()) > 0
    assert set(report["lora_targets"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert "other" not in comps or comps["other"]["trainable"] == 0
    saved = write_report(report, tmp_path)
    assert saved.name == "trainable_parameters.json" and "projector" in format_table(report)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_4bit_quantizes_only_the_language_model(tiny_dir, family):
    import bitsandbytes as bnb

    path = tiny_dir(family)
    args = _model_args(path, load_in_4bit=True, use_bnb_nested_quant=True, dtype="bfloat16")
    model, parts = load_model(args, trust_remote_code=True)
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(n.startswith(parts.language_model + ".") for n in quantized), family


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_frozen_vision_tower_stays_out_of_the_backward_pass(tiny_dir, llava_processor, family):
    """transformers' input-grad hooks on the patch embeddings are dropped; LoRA and projector still learn."""
    from transformers import AutoProcessor

    from vlm_sft.modeling.setup import keep_frozen_vision_tower_out_of_backward

    path = tiny_dir(family)
    args = _model_args(path, lora_dropout=0.0)
    model, parts = load_model(args, trust_remote_code=True)
    model = apply_lora(model, parts, args, VisionArguments(lora_target="attention"))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # what the Trainer does for PEFT + checkpointing
    vision = model.get_base_model().get_submodule(parts.vision_tower)
    # The tower's last block (CLIP: encoder layer; Qwen: ViT block), before the projector.
    blocks = [m for n, m in vision.named_modules() if n.rsplit(".", 1)[-1].isdigit() and "merger" not in n]
    seen = []
    blocks[-1].register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).requires_grad))
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    from PIL import Image

    row = {
        "images": [Image.new("RGB", (40, 30), "red")],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "color?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ],
    }
    batch = VisionSFTCollator(processor)([row, row])
    model.train()
    model(**batch).loss.backward()
    assert seen[-1] is True, "transformers' hooks do send the frozen tower through autograd"
    model.zero_grad()

    assert keep_frozen_vision_tower_out_of_backward(model, parts) >= 1
    model(**batch).loss.backward()
    assert seen[-1] is False
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_B" in n for n in grads) and any("modules_to_save" in n for n in grads)
