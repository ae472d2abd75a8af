"""Real 2-process data-parallel training on CPU through `accelerate launch`, and the engine checks behind it.

The run goes through the training entry point with observation hooks (tests/train_probe.py): each rank
records its process group's size, the samples it was given, its losses and the weights it holds at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from vlm_sft.training.distributed import EngineError, check_process_group, detect_engine, unify_float_dtype

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Global batches of 2 in order (sequential sampler); accelerate deals them out alternately, so rank 0 gets
# batches 0, 2, 4, 6 and rank 1 batches 1, 3, 5, 7. I = a sample with an image, T = text only. At step 1
# rank 1 has no image at all while rank 0 has two; at step 2 the other way round; at step 3 both mixed.
LAYOUT = ["II", "TT", "TT", "II", "IT", "TI", "II", "II"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Offline, unbuffered, one thread per process (two processes share two cores), a private lengths cache."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLM_SFT_CACHE": str(tmp_path / "cache"),
        **extra,
    }


def write_mixed_data(digits: dict[str, Path], out: Path) -> list[str]:
    """16 LLaVA-format samples laid out per LAYOUT; returns each sample's question (its identity)."""
    images = json.loads(Path(digits["train"]).read_text())
    rows = []
    for i, kind in enumerate("".join(LAYOUT)):
        if kind == "I":
            question = f"What digit is this? (sample {i})"
            convs = [{"from": "human", "value": f"<image>\n{question}"}, images[i]["conversations"][1]]
            rows.append({"id": f"s{i}", "image": images[i]["image"], "conversations": convs})
        else:
            question = f"What comes after {i}? (sample {i})"
            convs = [{"from": "human", "value": question}, {"from": "gpt", "value": str(i + 1)}]
            rows.append({"id": f"s{i}", "conversations": convs})
    out.write_text(json.dumps(rows))
    return [r["conversations"][0]["value"].removeprefix("<image>\n") for r in rows]


def read_probe(probe: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (probe / f"rank{rank}.jsonl").read_text().splitlines()]


# QLoRA as the GPU recipes run it (nf4, bf16 compute under bf16 autocast), here on CPU: DDP + 4-bit is supported.
QLORA = ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--dtype", "bfloat16", "--bf16", "true"]


@pytest.mark.slow
@pytest.mark.parametrize("quantization", [[], QLORA], ids=["lora", "qlora"])
def test_two_process_cpu_training(tmp_path: Path, tiny_llava: Path, digits: dict[str, Path], quantization: list[str]):
    if quantization:
        pytest.importorskip("bitsandbytes")
    questions = write_mixed_data(digits, tmp_path / "mixed.json")
    out, probe = tmp_path / "out", tmp_path / "probe"
    command = [BIN / "accelerate", "launch", "--config_file", REPO / "recipes/accelerate_configs/cpu_ddp.yaml"]
    command += ["--main_process_port", str(free_port()), REPO / "tests/train_probe.py"]
    command += [REPO / "recipes/quickstart.yaml"]
    command += ["--model_name_or_path", tiny_llava, "--train_file", tmp_path / "mixed.json"]
    command += ["--image_dir", digits["image_dir"], "--eval_file", "", "--output_dir", out]
    command += ["--max_steps", "4", "--per_device_train_batch_size", "2", "--train_sampling_strategy", "sequential"]
    command += ["--logging_steps", "1", "--warmup_steps", "0", *quantization]
    # A rank waiting forever for a peer (e.g. on a batch without images) would hit this timeout.
    done = subprocess.run(
        [str(c) for c in command],
        cwd=REPO,
        env=subprocess_env(tmp_path, VLM_SFT_PROBE_DIR=str(probe)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = {r: read_probe(probe, r) for r in (0, 1)}

    # Two ranks in one process group of two.
    for rank, events in ranks.items():
        losses = [e for e in events if e["event"] == "loss"]
        assert [e["step"] for e in losses] == [1, 2, 3, 4] and {e["world_size"] for e in losses} == {2}, rank

    # Different samples per rank, together all of them, each once; the image-less batches were where planned.
    seen = {r: [s for e in events if e["event"] == "batch" for s in e["samples"]] for r, events in ranks.items()}
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == sorted(questions)
    for rank, events in ranks.items():
        kinds = ["".join("I" if n else "T" for n in e["images"]) for e in events if e["event"] == "batch"]
        assert kinds == LAYOUT[rank::2], rank

    # Same numbers where they must agree: the token count behind each step's loss is gathered over both ranks,
    # and the logged loss is the mean of the ranks' losses (each normalised by that global count).
    loss = {r: {e["step"]: e for e in events if e["event"] == "loss"} for r, events in ranks.items()}
    state = json.loads((out / "trainer_state.json").read_text())
    logged = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    assert state["global_step"] == 4 and sorted(logged) == [1, 2, 3, 4]
    for step in logged:
        assert loss[0][step]["items"] == loss[1][step]["items"] > 0
        assert loss[0][step]["loss"] != loss[1][step]["loss"]  # different samples
        assert logged[step] == pytest.approx((loss[0][step]["loss"] + loss[1][step]["loss"]) / 2, rel=1e-5)

    # Both ranks end with the same weights (gradients were averaged), and the adapter written is exactly them.
    held = {r: load_file(probe / f"rank{r}_final.safetensors") for r in (0, 1)}
    saved = load_file(out / "adapter_model.safetensors")
    assert set(held[0]) == set(held[1]) == set(saved) and any("multi_modal_projector" in k for k in saved)
    for name, tensor in saved.items():
        assert torch.equal(held[0][name], held[1][name]), name
        assert torch.equal(held[0][name], tensor), name

    # Written once, by rank 0 only.
    saves = [(r, e["path"]) for r, events in ranks.items() for e in events if e["event"] == "save_pretrained"]
    assert saves == [(0, str(out))]


def test_launched_processes_that_did_not_form_a_group_are_refused():
    """`--multi_gpu` on a CPU machine without `use_cpu: true`: two processes, each a world of one."""
    with pytest.raises(EngineError, match="2 processes were launched, but each runs as a world of 1"):
        check_process_group(SimpleNamespace(world_size=1), environ={"WORLD_SIZE": "2"})
    check_process_group(SimpleNamespace(world_size=2), environ={"WORLD_SIZE": "2"})
    check_process_group(SimpleNamespace(world_size=1), environ={})


def test_one_process_cpu_launch_is_named(caplog):
    """`accelerate launch --cpu --num_processes 2` runs one process; say so instead of training on half the plan."""
    env = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with caplog.at_level("WARNING", logger="vlm_sft.training.distributed"):
        check_process_group(SimpleNamespace(world_size=1), environ=env)
    assert "Running ONE process" in caplog.text and "cpu_ddp.yaml" in caplog.text


def test_engine_from_a_recipe_deepspeed_json(tmp_path: Path):
    """torchrun + `deepspeed: ds.json` in the recipe (no accelerate environment) is seen too."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    engine = detect_engine(SimpleNamespace(deepspeed=str(ds), fsdp=None), environ={"WORLD_SIZE": "4"})
    assert (engine.name, engine.zero_stage, engine.world_size, engine.shards_weights) == ("deepspeed", 3, 4, True)
    fsdp = detect_engine(SimpleNamespace(deepspeed=None, fsdp=["full_shard"]), environ={})
    assert fsdp.name == "fsdp" and fsdp.shards_weights
    ddp = detect_engine(SimpleNamespace(deepspeed=None, fsdp=[]), environ={"WORLD_SIZE": "2"})
    assert (ddp.name, ddp.shards_weights) == ("ddp", False)


def test_sharded_qlora_model_has_one_float_dtype(tiny_llava: Path):
    """FSDP flattens a unit into one buffer of one dtype: after PEFT's k-bit preparation (fp32 norms) and fp32 LoRA,
    vlm-sft casts every float parameter to the 4-bit storage dtype, and the model still trains."""
    pytest.importorskip("bitsandbytes")
    from trl import ModelConfig

    from vlm_sft.collator import VisionSFTCollator
    from vlm_sft.modeling.setup import apply_lora, load_model
    from vlm_sft.training.config import VisionArguments

    args = ModelConfig(
        model_name_or_path=str(tiny_llava),
        dtype="bfloat16",
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_quant_storage="bfloat16",
        use_peft=True,
        lora_r=4,
    )
    model, parts = load_model(args)
    model = apply_lora(model, parts, args, VisionArguments())
    before = {p.dtype for p in model.parameters()}
    assert torch.float32 in before, "PEFT's k-bit preparation upcasts; if not, this test no longer tests anything"
    assert unify_float_dtype(model, "bfloat16") > 0
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {type(p).__name__ for p in model.parameters() if not p.requires_grad} >= {"Params4bit"}

    from PIL import Image
    from transformers import AutoProcessor

    collator = VisionSFTCollator(AutoProcessor.from_pretrained(tiny_llava))
    image = Image.new("RGB", (32, 32), "white")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "7"}]},
    ]
    batch = collator([{"images": [image], "messages": messages}])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    model(**batch).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)


@pytest.mark.parametrize("zero3", [False, True])
def test_4bit_device_map_per_rank_except_under_zero3(tiny_llava: Path, monkeypatch, zero3: bool):
    """Each rank loads its 4-bit copy on its own GPU; under ZeRO-3 transformers refuses any device_map (its
    bitsandbytes quantizer then picks the current GPU), so none is passed there."""
    from trl import ModelConfig

    import vlm_sft.modeling.setup as model_module

    class Loaded(Exception):
        pass

    def spy(*args, **kwargs):
        raise Loaded(kwargs["device_map"])

    monkeypatch.setattr(model_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(model_module, "is_deepspeed_zero3_enabled", lambda: zero3)
    monkeypatch.setattr(model_module.AutoModelForImageTextToText, "from_pretrained", spy)
    args = ModelConfig(model_name_or_path=str(tiny_llava), dtype="bfloat16", load_in_4bit=True)
    with pytest.raises(Loaded) as loaded:
        model_module.load_model(args)
    assert loaded.value.args[0] == (None if zero3 else {"": 0})
