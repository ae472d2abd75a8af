"""The precision matrix on CPU: every quantization x mixed precision x dtype x 4-bit storage combination
trains two real steps on the tiny LLaVA (LoRA and projector learn, losses finite), or is refused before
the model loads with one `error:` line naming the keys. fp16 autocast is GPU-only: benchmarks/gpu_precision.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm_sft.modeling.precision import trainable_dtype

REPO = Path(__file__).resolve().parents[1]


def run_args(tmp_path: Path, tiny_llava: Path, digits: dict[str, Path], *extra: str) -> list[str]:
    """The quickstart recipe cut to two steps of two samples on four digits (a few seconds per run)."""
    train = tmp_path / "train.json"
    train.write_text(json.dumps(json.loads(Path(digits["train"]).read_text())[:4]))
    return [
        *(str(REPO / "recipes/quickstart.yaml"), "--model_name_or_path", str(tiny_llava), "--eval_file", ""),
        *("--train_file", str(train), "--image_dir", str(digits["image_dir"]), "--output_dir", str(tmp_path / "out")),
        *("--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1"),
        *extra,
    ]


def assert_trained(out: Path, tiny_llava: Path) -> None:
    """Finite losses were logged, every LoRA B left zero, and the projector moved away from the base weights."""
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "LoRA got no gradient"
    base = load_file(tiny_llava / "model.safetensors")
    key = "multi_modal_projector."
    projector = {k.split(key, 1)[1]: t for k, t in adapter.items() if key in k}
    assert projector, "the projector is saved with the adapter"
    for name, weight in projector.items():
        original = base[key + name].float()
        assert not torch.equal(weight.float(), original), f"projector {name} did not learn"


QUANT = {"none": (), "8-bit": ("--load_in_8bit", "true"), "4-bit": ("--load_in_4bit", "true")}
# (quantization, mixed precision, dtype, 4-bit storage or None for the default uint8)
TRAINS = [
    *[("none", mp, dt, None) for mp in ("bf16", "no") for dt in ("bfloat16", "float32")],
    *[("8-bit", mp, dt, None) for mp in ("bf16", "no") for dt in ("bfloat16", "float16", "float32")],
    *[("4-bit", mp, dt, dt) for mp in ("bf16", "no") for dt in ("bfloat16", "float16", "float32")],
    ("4-bit", "bf16", "bfloat16", None),
    ("4-bit", "no", "float32", None),  # the crash: --bf16 false on the QLoRA recipe
    ("4-bit", "no", "float32", "bfloat16"),
]


def _precision_args(quant: str, mp: str, dtype: str, storage: str | None) -> list[str]:
    args = [*QUANT[quant], "--dtype", dtype, "--bf16", str(mp == "bf16").lower(), "--fp16", str(mp == "fp16").lower()]
    return args + (["--bnb_4bit_quant_storage", storage] if storage else [])


@pytest.mark.parametrize("combo", TRAINS, ids=lambda c: "-".join(str(x) for x in c))
def test_cpu_combination_trains(tmp_path, tiny_llava, digits, combo):
    from vlm_sft.training.train import main

    assert main(run_args(tmp_path, tiny_llava, digits, *_precision_args(*combo))) == 0
    assert_trained(tmp_path / "out", tiny_llava)


REFUSED = [
    (("none", "no", "float16", None), ["dtype: float16", "fp16: true", "dtype: float32"]),
    (("none", "bf16", "float16", None), ["bf16: true with dtype: float16", "dtype: bfloat16"]),
    (("4-bit", "fp16", "bfloat16", "bfloat16"), ["fp16: true with dtype: bfloat16", "bf16: true", "dtype: float16"]),
    # The quickstart recipe sets use_cpu: true, so these are refused on a GPU machine too.
    (("none", "fp16", "float32", None), ["fp16: true needs a GPU", "fp16: false"]),
    (("4-bit", "fp16", "float16", "float16"), ["fp16: true needs a GPU", "fp16: false"]),  # the T4 path, on CPU
]


@pytest.mark.parametrize("combo,words", REFUSED, ids=lambda c: "-".join(str(x) for x in c) if len(c) == 4 else "")
def test_combination_refused_before_loading(tmp_path, tiny_llava, digits, combo, words, capsys, monkeypatch):
    import vlm_sft.training.train as train_module

    def no_model(*args, **kwargs):
        raise AssertionError("the refusal must come before the model is loaded")

    monkeypatch.setattr(train_module, "load_model", no_model)
    assert train_module.main(run_args(tmp_path, tiny_llava, digits, *_precision_args(*combo))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0]
    assert not (tmp_path / "out").exists(), "nothing written"


def test_trainable_dtype_rule():
    # TRL's QLoRA bf16 adapters stay under bf16 autocast; fp32 where nothing reconciles dtypes or a GradScaler runs.
    assert trainable_dtype(quantized=True, mp="bf16") is None
    assert trainable_dtype(quantized=True, mp="no") is torch.float32
    assert trainable_dtype(quantized=True, mp="fp16") is torch.float32
    assert trainable_dtype(quantized=False, mp="fp16") is torch.float32
    assert trainable_dtype(quantized=False, mp="no") is None


def test_eval_infer_and_merge_state_one_dtype_rule(tmp_path):
    from vlm_sft.hub.adapters import trained_dtype
    from vlm_sft.modeling.precision import inference_dtype

    assert inference_dtype("auto", "cpu") == "float32"  # 16-bit matmuls are slow or emulated on CPU
    assert inference_dtype("float16", "cpu") == "float16"  # an explicit --dtype is used as given
    if torch.cuda.is_available():
        assert inference_dtype("auto", "cuda") == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert trained_dtype(tmp_path) is None
    (tmp_path / "training_summary.json").write_text(json.dumps({"training_precision": {"dtype": "float16"}}))
    assert trained_dtype(tmp_path) == "float16"


def test_card_records_the_training_precision():
    from types import SimpleNamespace

    from vlm_sft.modeling.precision import precision_line, precision_summary

    model_args = SimpleNamespace(
        load_in_4bit=True, load_in_8bit=False, dtype="float16", bnb_4bit_quant_storage="float16"
    )
    summary = precision_summary(model_args, SimpleNamespace(bf16=False, fp16=True))
    assert summary == {
        "quantization": "4-bit",
        "dtype": "float16",
        "mixed_precision": "fp16",
        "bnb_4bit_quant_storage": "float16",
    }
    line = precision_line(summary)
    assert line.startswith("Training precision: 4-bit base, dtype float16, fp16 autocast, 4-bit storage float16.")
    assert "`--dtype float16`" in line
