"""The memory estimator: parameter arithmetic against real modules, LoRA counts, and `vlm-sft estimate` offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from vlm_sft.cli import main as cli_main
from vlm_sft.cli.estimate import builtin_configs, resolve_config
from vlm_sft.modeling.memory import (
    GiB,
    ModelShape,
    TrainingSetup,
    activation_phases,
    estimate,
    lesson_formula,
    lora_params,
    lora_targets,
    quant_constants_bytes,
    quantized_numel,
    setup_from_recipe,
)

REPO = Path(__file__).resolve().parents[1]
QLORA_RECIPE = {  # the keys of recipes/llava_qlora.yaml that decide memory
    "dtype": "bfloat16",
    "load_in_4bit": True,
    "use_bnb_nested_quant": True,
    "use_peft": True,
    "lora_r": 16,
    "lora_target": "attention",
    "per_device_train_batch_size": 4,
    "activation_checkpointing": True,
    "max_length": None,
}


def _shape(name: str) -> ModelShape:
    return ModelShape.from_config(resolve_config(name)[0])


def _tiny_llava_config(vision: str = "clip", text: str = "llama"):
    """Small LLaVA configs with the variations the arithmetic must follow: GQA, biases, SigLIP's head."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, Qwen2Config, SiglipVisionConfig

    vision_kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    vision_kw.update(image_size=32, patch_size=8)
    text_kw = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
    text_kw.update(num_attention_heads=4, num_key_value_heads=2)
    return LlavaConfig(
        vision_config=(CLIPVisionConfig if vision == "clip" else SiglipVisionConfig)(**vision_kw),
        text_config=(LlamaConfig if text == "llama" else Qwen2Config)(**text_kw),
        image_token_id=299,
    )


# ---------------------------------------------------------------------------- parameter arithmetic


def test_llava_15_7b_parameter_count():
    shape = _shape("llava-hf/llava-1.5-7b-hf")
    assert shape.num_params() == 7_063_427_072  # "7.06B": CLIP ViT-L/14-336 + projector + Vicuna-7B (vocab 32064)
    assert shape.num_params("vision_tower") == 303_507_456
    assert shape.num_params("projector") == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert shape.num_params("lm_head") == 4096 * 32064
    assert quantized_numel(shape) == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert shape.image_tokens == (336 // 14) ** 2 == 576


def test_llava_15_13b_parameter_count():
    assert _shape("llava-1.5-13b").num_params() == 13_351_494_656


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(lambda: resolve_config("llava-1.5-7b")[0], id="llava-1.5-7b"),
        pytest.param(lambda: resolve_config("llava-v1.6-mistral-7b")[0], id="llava-next-mistral-gqa"),
        pytest.param(lambda: _tiny_llava_config("siglip", "qwen2"), id="tiny-siglip-qwen2-bias"),
        pytest.param(lambda: _tiny_llava_config("clip", "llama"), id="tiny-clip-llama-gqa"),
    ],
)
def test_arithmetic_matches_modules_on_meta_device(config):
    """Every component's count equals the real transformers modules' (built on the meta device: no memory)."""
    from transformers import AutoModelForImageTextToText

    cfg = config()
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    real: dict[str, int] = {}
    for name, param in model.named_parameters():
        comp = (
            "vision_tower"
            if name.startswith("model.vision_tower.")
            else "projector"
            if name.startswith(("model.multi_modal_projector.", "model.image_newline"))
            else "lm_head"
            if name.startswith("lm_head")
            else "language_model"
        )
        real[comp] = real.get(comp, 0) + param.numel()
    shape = ModelShape.from_config(cfg)
    assert {comp: shape.num_params(comp) for comp in real} == real
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {p for m in shape.matrices for p in m.paths()} <= linears  # paths are real module paths (for regexes)


def test_builtin_names():
    names = builtin_configs()
    for name in ("llava-hf/llava-1.5-7b-hf", "llava-1.5-7b-hf", "llava-1.5-7b", "llava-hf/llava-1.5-13b-hf"):
        assert name in names


# ---------------------------------------------------------------------------- LoRA and quantization


def test_lora_pair_is_r_times_din_plus_dout():
    shape = _shape("llava-1.5-7b")
    setup = TrainingSetup(lora_r=16, lora_target="all-linear")
    targets = lora_targets(shape, setup)
    assert {m.name for m in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(m.component == "language_model" for m in targets)  # never CLIP's q_proj/v_proj
    gate = next(m for m in targets if m.name == "gate_proj")
    assert lora_params([gate], 16) == 32 * 16 * (4096 + 11008)
    assert lora_params(targets, 16) == 32 * (4 * 16 * (4096 + 4096) + 3 * 16 * (4096 + 11008))
    attention = lora_targets(shape, TrainingSetup(lora_r=16, lora_target="attention"))
    assert lora_params(attention, 16) == 128 * 16 * 8192 == 16_777_216


def test_plain_names_reach_the_vision_tower_regex_does_not():
    shape = _shape("llava-1.5-7b")
    names = lora_targets(shape, TrainingSetup(lora_target_modules=["q_proj", "v_proj"]))
    assert {m.component for m in names} == {"language_model", "vision_tower"}  # the lesson's mistake
    regex = lora_targets(shape, TrainingSetup(lora_target_modules=r"model\.language_model\..*\.(q_proj|v_proj)"))
    assert {m.component for m in regex} == {"language_model"} and len(regex) == 2


@pytest.mark.parametrize("preset", ["qv", "attention", "all-linear"])
def test_lora_count_matches_peft(preset):
    """The estimator's LoRA count equals PEFT's on a real (tiny, GQA) model with the project's target regex."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from vlm_sft.modeling.setup import COMPONENTS, lora_target_regex

    cfg = _tiny_llava_config()
    model = LlavaForConditionalGeneration(cfg)
    lora = LoraConfig(r=8, target_modules=lora_target_regex(COMPONENTS["llava"], preset))
    peft_model = get_peft_model(model, lora)
    real = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    targets = lora_targets(ModelShape.from_config(cfg), TrainingSetup(lora_r=8, lora_target=preset))
    assert lora_params(targets, 8) == real


def test_quantization_constants():
    shape = _shape("llava-1.5-7b")
    blocks_q = 4096 * 4096 // 64
    # fp32 absmax per 64 values: 1/16 byte per parameter, plus a 16-entry NF4 code per weight
    assert quant_constants_bytes(shape, double_quant=False) == pytest.approx(quantized_numel(shape) / 16, rel=1e-4)
    q_proj = next(m for m in shape.lm_linears() if m.name == "q_proj")  # 32 layers of 4096 x 4096
    one = ModelShape(shape.description, (q_proj,), (), shape.text, shape.vision, 576)
    per = blocks_q + 4 * math.ceil(blocks_q / 256) + 4 * 256 + 4 + 4 * 16
    assert quant_constants_bytes(one, double_quant=True) == 32 * per


# ---------------------------------------------------------------------------- estimate


def test_qlora_recipe_estimate_lines():
    shape = _shape("llava-1.5-7b")
    est = estimate(shape, setup_from_recipe(QLORA_RECIPE))
    lines = {line.label: line.bytes for line in est.static}
    assert lines["base: 4-bit language-model linears"] == quantized_numel(shape) // 2
    assert lines["base: kept unquantized"] == 587_421_696 * 4  # fp32 after prepare_model_for_kbit_training
    assert lines["trainable: LoRA"] == 16_777_216 * 2  # TRL casts trainable params to bf16 on a 4-bit base
    assert lines["trainable: modules_to_save copies"] == 20_979_712 * 2
    assert lines["optimizer state"] == 2 * 2 * (16_777_216 + 20_979_712)  # moments in the params' bf16
    assert est.setup.seq_len(shape) == 576 + 512  # max_length null: image tokens + the default text length
    assert 6 * GiB < est.total < 16 * GiB
    assert est.total_for(False) > 2 * est.total_for(True)  # checkpointing pays off at 4 x 1088 tokens


def test_kbit_upcast_and_device_switch():
    shape = _shape("llava-1.5-7b")
    base = setup_from_recipe(QLORA_RECIPE)
    no_upcast = setup_from_recipe(QLORA_RECIPE, kbit_fp32_upcast=False)
    assert estimate(shape, no_upcast).total < estimate(shape, base).total - GiB  # ~587M params x 2 B saved
    cpu = activation_phases(shape, setup_from_recipe(QLORA_RECIPE, device="cpu"), True)
    gpu = activation_phases(shape, base, True)
    assert (cpu.loss_rows, gpu.loss_rows) == (4 * 1087, 4 * 511)  # Triton scores labelled (text) positions only
    assert cpu.loss > gpu.loss + 29 * 4096 * 32064  # the torch fallback's fp32 temporaries
    assert cpu.saved > gpu.saved  # CPU dropout keeps a bf16 noise tensor, CUDA's a bool mask


def test_recipe_defaults_follow_trl():
    setup = setup_from_recipe({})
    assert (setup.max_length, setup.batch_size, setup.gradient_checkpointing) == (1024, 8, True)
    assert setup_from_recipe({"max_length": None}).max_length is None
    with pytest.raises(ValueError, match="lora_target"):
        setup_from_recipe({"lora_target": "everything"})


def test_lesson_formula_readings():
    shape = _shape("llava-v1.6-mistral-7b")  # GQA: k/v are 4096 x 1024, so 2r x d_in overcounts them
    setup = TrainingSetup(lora_r=16, lora_target="attention")
    f = lesson_formula(shape, setup)
    assert f["lora_params_exact"] == 32 * 16 * (2 * 8192 + 2 * (4096 + 1024))
    assert f["lora_params_intended"] == 32 * 4 * 2 * 16 * 4096
    assert f["literal"] > 10 * f["intended"]  # r x every targeted weight: nonsense


# ---------------------------------------------------------------------------- CLI (offline)


@pytest.fixture
def qlora_yaml(tmp_path) -> Path:
    path = tmp_path / "llava_qlora.yaml"
    path.write_text(yaml.safe_dump(QLORA_RECIPE))
    return path


def test_cli_builtin_id_offline(qlora_yaml, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["estimate", "llava-hf/llava-1.5-7b-hf", "--recipe", str(qlora_yaml)]) == 0
    out = capsys.readouterr().out
    assert "7.06B" in out and "4-bit NF4 + double quant" in out and "576 image + 512 text" in out
    assert "gradient checkpointing on <- recipe" in out and "|theta|/2" in out


def test_cli_with_the_repository_recipe(capsys):
    assert cli_main(["estimate", "llava-hf/llava-1.5-7b-hf", "--recipe", "recipes/llava_qlora.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["setup"]["load_in_4bit"] and out["setup"]["double_quant"] and out["setup"]["batch_size"] == 4
    assert out["counts"]["total"] == 7_063_427_072


def test_cli_local_folder_and_overrides(tmp_path, capsys):
    _tiny_llava_config().save_pretrained(tmp_path)
    code = cli_main(["estimate", str(tmp_path), "--batch-size", "2", "--seq-len", "10", "--device", "cpu", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"].startswith("local") and out["setup"]["batch_size"] == 2
    assert out["setup"]["text_tokens"] == 10 and out["setup"]["max_length"] is None


def test_cli_unknown_model_is_a_clear_error(capsys):
    assert cli_main(["estimate", "nobody/no-such-vlm"]) == 1
    err = capsys.readouterr().err
    assert "No config for 'nobody/no-such-vlm'" in err and "llava-hf/llava-1.5-7b-hf" in err


def test_cli_unmapped_family_is_a_clear_error(tmp_path, capsys):
    from transformers import LlavaOnevisionConfig

    LlavaOnevisionConfig().save_pretrained(tmp_path)
    assert cli_main(["estimate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Unsupported model family 'llava_onevision'") and err.count("\n") == 1
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- every family

RECIPE_MODELS = {  # built-in config -> its published parameter count
    "Qwen/Qwen2.5-VL-7B-Instruct": 8.29e9,
    "Qwen/Qwen3-VL-4B-Instruct": 4.44e9,
    "google/gemma-3-4b-it": 4.30e9,
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": 2.25e9,
    "HuggingFaceM4/Idefics3-8B-Llama3": 8.46e9,
    "google/paligemma2-3b-pt-224": 3.03e9,
    "llava-hf/llava-v1.6-mistral-7b-hf": 7.57e9,
}


@pytest.mark.parametrize("name", sorted(RECIPE_MODELS))
def test_builtin_family_shapes(name):
    shape = _shape(name)
    assert shape.num_params() == pytest.approx(RECIPE_MODELS[name], rel=0.01)
    assert shape.num_params("vision_tower") > 0 and shape.num_params("projector") > 0
    # what 4-bit quantizes is the language model's linears, never the tower or the projector
    assert all(m.component == "language_model" for m in shape.lm_linears()) and quantized_numel(shape) > 0
    targets = lora_targets(shape, TrainingSetup(lora_target="attention"))
    assert targets and {m.component for m in targets} == {"language_model"}
    assert {m.name for m in targets} == {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3", "idefics3", "qwen3_vl"])
def test_lora_count_matches_peft_on_tiny_families(family, tiny_dir):
    """Shapes from the meta device and apply_lora's regex give PEFT's own LoRA parameter count, vision included."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlm_sft.modeling.setup import components_for, lora_target_regex

    config = AutoConfig.from_pretrained(tiny_dir(family))
    shape = ModelShape.from_config(config)
    for on_vision in (False, True):
        model = AutoModelForImageTextToText.from_config(config)
        regex = lora_target_regex(components_for(config), "all-linear", on_vision)
        real = sum(
            p.numel()
            for n, p in get_peft_model(model, LoraConfig(r=4, target_modules=regex)).named_parameters()
            if "lora_" in n
        )
        setup = TrainingSetup(lora_r=4, lora_target="all-linear", lora_on_vision_tower=on_vision)
        assert lora_params(lora_targets(shape, setup), 4) == real, on_vision


def test_cli_every_builtin_recipe_model_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in RECIPE_MODELS:
        assert cli_main(["estimate", name, "--json"]) == 0, name
        out = json.loads(capsys.readouterr().out)
        assert out["image_tokens_per_image"] > 0 and 1 < out["total_gib"]["checkpointing_on"] < 1000


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-size", "0"],
        ["--lora-r", "-5"],
        ["--seq-len", "-100"],
        ["--per_device_train_batch_size", "0"],
        ["--max_image_tokens", "0"],
    ],
)
def test_cli_refuses_impossible_numbers(argv, capsys):
    assert cli_main(["estimate", "llava-1.5-7b", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and err.count("\n") == 1


def test_cli_recipe_keys_and_old_spellings_agree(capsys):
    outs = []
    for argv in (["--per_device_train_batch_size", "3", "--lora_r", "8"], ["--batch-size", "3", "--lora-r", "8"]):
        assert cli_main(["estimate", "llava-1.5-7b", "--recipe", "recipes/llava_qlora.yaml", "--json", *argv]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["setup"] == outs[1]["setup"] and outs[0]["setup"]["batch_size"] == 3
    assert outs[0]["setup"]["lora_r"] == 8 and outs[0]["setup"]["double_quant"]  # the rest from the recipe


def test_cli_recipe_with_an_unknown_key_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "recipes" / "llava_qlora.yaml").read_text() + "\nwarmup_ratio: 0.03\n")
    assert cli_main(["estimate", "llava-1.5-7b", "--recipe", str(bad)]) == 1
    assert "warmup_ratio" in capsys.readouterr().err


def test_loss_tile_dtype_is_named_per_setup(capsys):
    from vlm_sft.modeling.memory import compute_dtype

    assert compute_dtype(setup_from_recipe(QLORA_RECIPE | {"bf16": True})) == "bf16"
    assert compute_dtype(setup_from_recipe({"dtype": "float32", "bf16": False})) == "fp32"
    assert compute_dtype(setup_from_recipe({"dtype": "float16", "fp16": True})) == "fp16"
    for flags, tile in ((["--dtype", "float32", "--no-bf16"], "one fp32 tile"), (["--bf16"], "one bf16 tile")):
        assert cli_main(["estimate", "llava-1.5-7b", "--device", "cpu", "--max_length", "64", *flags]) == 0
        out = capsys.readouterr().out
        assert tile in out.split("loss-head transient")[1].splitlines()[0], out


def test_resolution_keys_change_image_tokens(capsys):
    base = _shape("Qwen/Qwen2.5-VL-7B-Instruct").image_tokens
    assert base == 16384  # the processor default: 12,845,056 pixels / 28^2
    for argv, want in ((["--image_max_pixels", str(1024 * 28 * 28)], 1024), (["--max_image_tokens", "256"], 256)):
        assert cli_main(["estimate", "Qwen/Qwen2.5-VL-7B-Instruct", "--json", *argv]) == 0
        assert json.loads(capsys.readouterr().out)["image_tokens_per_image"] == want
    assert cli_main(["estimate", "google/gemma-3-4b-it", "--image_max_pixels", "1000"]) == 1
    err = capsys.readouterr().err
    assert "image_max_pixels is not supported by the gemma3 family" in err


def test_cli_data_uses_your_images(tmp_path, capsys):
    """--data: image tokens per sample from the user's own image sizes at the recipe's resolution."""
    from PIL import Image

    rows = []
    for i, size in enumerate([(448, 336), (4032, 3024), (100, 100)]):
        Image.new("RGB", size, (90, 90, 90)).save(tmp_path / f"p{i}.png")
        convs = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A photo."}]
        rows.append({"id": f"photo-{i}", "image": f"p{i}.png", "conversations": convs})
    (tmp_path / "train.json").write_text(json.dumps(rows))
    argv = ["estimate", "Qwen/Qwen2.5-VL-7B-Instruct", "--recipe", "recipes/qwen2_5_vl_7b_qlora.yaml", "--json"]
    assert cli_main([*argv, "--data", str(tmp_path / "train.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    # the 12-megapixel photo is resized (aspect kept) into the recipe's 1,003,520-pixel budget, as the processor does
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    h, w = smart_resize(3024, 4032, 28, 3136, 1003520)
    assert out["data"]["max"] == h * w // 28**2 == out["image_tokens_per_image"] <= 1280
    assert out["data"]["max_sample"] == "photo-1"
    assert out["data"]["samples"] == 3 and out["data"]["p50"] == 16 * 12  # 448 x 336 px
    assert cli_main([*argv, "--data", str(tmp_path / "train.json"), "--image_max_pixels", str(28 * 28 * 64)]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["max"] <= 64
