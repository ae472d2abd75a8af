"""Measure the peak memory of real (Q)LoRA training steps on this CPU and compare it with `vlm-sft estimate`.

    .venv/bin/python benchmarks/measure_memory.py                      # 10M, 50M, 150M x lora, qlora x GC on/off
    .venv/bin/python benchmarks/measure_memory.py --sizes 10m --modes qlora --checkpointing on
    .venv/bin/python benchmarks/measure_memory.py --sizes qwen2.5-vl,gemma3,idefics3   # other families

The other families (benchmarks/family_shapes.py) are tiny-but-real-shaped Qwen2.5-VL, Gemma 3 and Idefics3:
the recipe models' vocabularies, image geometry and layer structure, narrow and shallow layers.

Models are LLaVA-1.5-shaped (CLIP vision tower + 2-layer MLP projector + Llama language model,
vocabulary 32064) at three sizes, random weights built from `LlavaConfig`, saved once under
`.cache/memory-bench/` and loaded through the project's own path: `vlm_sft.modeling.setup.load_model`
(4-bit NF4 + double quantization, `prepare_model_for_kbit_training`) and `apply_lora` (LoRA r=16
on q/k/v/o of the language model, projector trained fully), then `trl.SFTTrainer` (bf16 autocast,
its fused LM-head loss, AdamW). Inputs are random token ids with the right number of `<image>`
tokens and random pixels; no tokenizer or processor is involved.

Method. Each configuration runs in a fresh process. The baseline is the resident set size (RSS)
after imports and before the model is built. After the first optimizer step (so AdamW's moments
exist), the process runs `gc.collect()` and `malloc_trim(0)`, resets the kernel's high-water mark
(`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), runs the remaining steps and reads `VmHWM`.
measured = VmHWM - baseline RSS: real memory, including allocator slack and library buffers.
With `--tensors` a second pass records every c10 CPU allocation with the PyTorch profiler and
reports the peak of live tensor bytes over the same steps (the allocator-level view).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # family_shapes.py, beside this file
from family_shapes import FAMILY_SIZES, FamilyBatches, family_config  # noqa: E402

CACHE = REPO / ".cache" / "memory-bench"
MiB = 1024**2


@dataclass(frozen=True)
class BenchModel:
    """A LLaVA-1.5-shaped model size. Language-model linears satisfy bitsandbytes' CPU constraints
    (in_features >= 64, out_features divisible by 32)."""

    text_hidden: int
    text_layers: int
    text_intermediate: int
    vision_hidden: int
    vision_layers: int
    image_size: int = 224  # 224 / 14 = 16 -> 256 image tokens (LLaVA-1.5 at 336 has 576)
    patch_size: int = 14
    vocab_size: int = 32064  # LLaVA-1.5's: the embeddings and lm_head are a real share of a small model


SIZES: dict[str, BenchModel] = {
    "10m": BenchModel(text_hidden=128, text_layers=4, text_intermediate=352, vision_hidden=128, vision_layers=2),
    "50m": BenchModel(text_hidden=512, text_layers=4, text_intermediate=1376, vision_hidden=256, vision_layers=4),
    "150m": BenchModel(text_hidden=768, text_layers=12, text_intermediate=2048, vision_hidden=384, vision_layers=6),
}
IMAGE_TOKEN_ID = 1000  # inside every benchmark vocabulary


def llava_config(size: BenchModel):
    """The `LlavaConfig` of a benchmark size (head_dim 64 everywhere, like the real models)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 4,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.vision_hidden // 64,
            image_size=size.image_size,
            patch_size=size.patch_size,
            projection_dim=size.vision_hidden,
        ),
        text_config=LlamaConfig(
            vocab_size=size.vocab_size,
            hidden_size=size.text_hidden,
            intermediate_size=size.text_intermediate,
            num_hidden_layers=size.text_layers,
            num_attention_heads=size.text_hidden // 64,
            num_key_value_heads=size.text_hidden // 64,
            max_position_embeddings=4096,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        ),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def model_dir(name: str) -> Path:
    """Build (once) and return the folder of a random-weight bf16 benchmark model."""
    import torch
    from transformers import LlavaForConditionalGeneration

    out = CACHE / name
    if (out / "model.safetensors").exists():
        return out
    torch.manual_seed(0)
    if name in FAMILY_SIZES:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_config(family_config(name)).to(torch.bfloat16)
    else:
        model = LlavaForConditionalGeneration(llava_config(SIZES[name])).to(torch.bfloat16)
    tmp = out.with_name(name + ".partial")
    model.save_pretrained(tmp)
    tmp.rename(out)  # a crash mid-build never leaves a folder that looks complete
    return out


# ---------------------------------------------------------------------------- worker (one configuration)


def _rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the kernel, so RSS reflects live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _tokenizer():
    """A 4-token tokenizer: SFTTrainer only needs pad/eos tokens; inputs are random ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


class RandomBatches:
    """Collator that turns a row's seed into a sample: <s>, the image tokens, then random text; loss on the text.

    The dataset holds only seeds (SFTTrainer wants a `datasets.Dataset`), so nothing big is built up front.
    """

    def __init__(self, image_tokens: int, text_tokens: int, image_size: int, vocab: int):
        self.image_tokens, self.text_tokens, self.image_size, self.vocab = image_tokens, text_tokens, image_size, vocab

    def _row(self, seed: int) -> dict:
        import torch

        g = torch.Generator().manual_seed(seed)
        text = torch.randint(IMAGE_TOKEN_ID + 1, self.vocab, (self.text_tokens,), generator=g)
        ids = torch.cat([torch.tensor([1]), torch.full((self.image_tokens,), IMAGE_TOKEN_ID), text])
        labels = ids.clone()
        labels[: 1 + self.image_tokens] = -100
        pixels = torch.randn(3, self.image_size, self.image_size, generator=g)
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels}

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        samples = [self._row(r["seed"]) for r in rows]
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch


def worker(args: argparse.Namespace) -> dict:
    """Train `args.steps` steps of one configuration and return the measured memory."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import ModelConfig, SFTConfig, SFTTrainer

    from vlm_sft.modeling.setup import apply_lora, load_model
    from vlm_sft.training.config import VisionArguments
    from vlm_sft.training.train import FrozenVisionTowerCallback

    torch.manual_seed(0)
    folder = model_dir(args.size)
    data = Dataset.from_dict({"seed": list(range(args.batch_size * args.steps))})
    if args.size in FAMILY_SIZES:
        collator = FamilyBatches(args.size, args.text_tokens)
    else:
        size = SIZES[args.size]
        image_tokens = (size.image_size // size.patch_size) ** 2
        collator = RandomBatches(image_tokens, args.text_tokens, size.image_size, size.vocab_size)
    tokenizer = _tokenizer()
    _release_freed_memory()
    baseline = _rss_bytes()

    # ---- the project's model setup (the same calls as vlm_sft.training.train)
    qlora = args.mode == "qlora"
    model_args = ModelConfig(
        model_name_or_path=str(folder),
        dtype="bfloat16",
        attn_implementation="sdpa",
        load_in_4bit=qlora,
        bnb_4bit_quant_type="nf4",
        use_bnb_nested_quant=qlora,
        use_peft=True,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.05,
    )
    vision = VisionArguments(lora_target=args.lora_target)
    checkpointing = args.checkpointing == "on"
    model, parts = load_model(model_args, gradient_checkpointing=checkpointing)
    model = apply_lora(model, parts, model_args, vision)

    result: dict = {"baseline_rss": baseline}

    class Window(TrainerCallback):
        """Resets the RSS high-water mark after step 1 and reads it after the last step."""

        def on_step_begin(self, train_args, state, control, **kwargs):
            if state.global_step == 1:
                _release_freed_memory()
                result["window_start_rss"] = _rss_bytes()
                if profiler is not None:
                    result["window_start_tensors"] = _live_tensor_bytes()
                    profiler.start()
                _reset_peak_rss()

        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step == args.steps:
                result["peak_rss"] = _rss_bytes("VmHWM")
                if profiler is not None:
                    profiler.stop()

    profiler = None
    if args.tensors:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            bf16=True,
            activation_checkpointing=checkpointing,
            max_length=None,
            dataset_kwargs={"skip_prepare_dataset": True},
            remove_unused_columns=False,
            dataloader_num_workers=0,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=data,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[FrozenVisionTowerCallback(parts), Window()],  # as training has it
        )
        trainer.train()
    result["measured"] = result["peak_rss"] - baseline
    if profiler is not None:
        peak, outside_loss = _tensor_peaks(profiler)
        result["tensor_peak"] = result["window_start_tensors"] + peak
        result["tensor_peak_outside_loss"] = result["window_start_tensors"] + outside_loss
    return result


def _live_tensor_bytes() -> int:
    """Bytes of every live tensor storage (weights, quantization state, optimizer moments), counted once."""
    import torch

    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            try:
                storage = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
                continue
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(storages.values())


def _tensor_peaks(prof) -> tuple[int, int]:
    """Peaks of the bytes allocated (net of frees) since the profiler started, over all c10 CPU
    allocations, and over those outside TRL's fused loss head (where a decoder layer's backward peaks)."""
    peaks = [0, 0]

    def walk(node, in_loss: bool):
        in_loss = in_loss or "ChunkedLogProbFunction" in node.name
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
            peaks[0] = max(peaks[0], fields.total_allocated)
            if not in_loss:
                peaks[1] = max(peaks[1], fields.total_allocated)
        for child in node.children:
            walk(child, in_loss)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, False)
    return peaks[0], peaks[1]


# ---------------------------------------------------------------------------- driver

# glibc adapts its mmap threshold upwards (to 32 MiB) as large blocks are freed, then serves
# mid-sized activations from heaps it rarely returns: RSS then keeps 20-25 % of freed memory. A
# fixed threshold makes every block over 128 KiB its own mapping, returned on free, so RSS counts
# live memory (the same quantity as torch.cuda.max_memory_allocated on a GPU).
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _setup(args: argparse.Namespace, mode: str, checkpointing: str):
    """The TrainingSetup `vlm-sft estimate` would build for this configuration, with CPU bookkeeping."""
    from vlm_sft.modeling.memory import TrainingSetup

    return TrainingSetup(
        dtype="bfloat16",
        load_in_4bit=mode == "qlora",
        double_quant=mode == "qlora",
        lora_r=args.lora_r,
        lora_target=args.lora_target,
        lora_dropout=0.05,
        batch_size=args.batch_size,
        text_tokens=args.text_tokens + 1,  # + <s>
        gradient_checkpointing=checkpointing == "on",
        device="cpu",
    )


def _shape(size: str):
    from vlm_sft.modeling.memory import ModelShape

    if size in FAMILY_SIZES:
        return ModelShape.from_config(family_config(size), FAMILY_SIZES[size]["images"])
    return ModelShape.from_config(llava_config(SIZES[size]))


def _estimates(args: argparse.Namespace, size: str, mode: str, checkpointing: str) -> dict[str, int]:
    """Estimated peak, and the peak outside the loss head (weights + saved activations + a layer's backward)."""
    from vlm_sft.modeling.memory import activation_phases, estimate

    shape = _shape(size)
    setup = _setup(args, mode, checkpointing)
    est = estimate(shape, setup)
    phases = activation_phases(shape, setup, setup.gradient_checkpointing)
    static = sum(line.bytes for line in est.static)
    return {"estimate": est.total, "estimate_outside_loss": static + phases.saved + phases.backward}


def _run_worker(args: argparse.Namespace, size: str, mode: str, checkpointing: str, kind: str) -> dict:
    """One fresh process; kind: rss (fixed mmap threshold), glibc (default malloc) or tensors (profiler)."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        f"--sizes={size}",
        f"--modes={mode}",
        f"--checkpointing={checkpointing}",
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--text-tokens={args.text_tokens}",
        f"--lora-r={args.lora_r}",
        f"--lora-target={args.lora_target}",
    ] + (["--tensors"] if kind == "tensors" else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kind != "glibc":
        env.update(FIXED_MMAP)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {size}/{mode}/{checkpointing} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _err(estimate: int, measured: int) -> str:
    return f"{100 * (estimate - measured) / measured:+5.1f}%"


def _row_text(row: dict) -> str:
    cells = [
        f"{row['model']:>10}",
        f"{row['params'] / 1e6:6.1f}M",
        f"{row['mode']:>5}",
        f"{row['checkpointing']:>4}",
        f"{row['estimate'] / MiB:8.0f}",
        f"{row['measured'] / MiB:8.0f}",
        _err(row["estimate"], row["measured"]),
    ]
    if "tensor_peak" in row:
        cells += [f"{row['tensor_peak'] / MiB:8.0f}", _err(row["estimate"], row["tensor_peak"])]
        cells += [
            f"{row['estimate_outside_loss'] / MiB:8.0f}",
            f"{row['tensor_peak_outside_loss'] / MiB:8.0f}",
            _err(row["estimate_outside_loss"], row["tensor_peak_outside_loss"]),
        ]
    if "glibc_measured" in row:
        cells += [f"{row['glibc_measured'] / MiB:8.0f}", _err(row["estimate"], row["glibc_measured"])]
    return " ".join(cells)


def _header(tensors: bool, glibc: bool) -> str:
    head = f"{'model':>10} {'params':>7} {'mode':>5} {'ckpt':>4} {'estimate':>8} {'RSS':>8} {'error':>6}"
    if tensors:
        head += f" {'tensors':>8} {'error':>6} {'est-layer':>8} {'tns-layer':>8} {'error':>6}"
    if glibc:
        head += f" {'RSS-glibc':>8} {'error':>6}"
    return head + "   (MiB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every = ", ".join([*SIZES, *FAMILY_SIZES])
    parser.add_argument("--sizes", default="10m,50m,150m", help=f"comma-separated, from {every}")
    parser.add_argument("--modes", default="lora,qlora", help="lora (bf16 base) and/or qlora (4-bit NF4 base)")
    parser.add_argument("--checkpointing", default="on,off", help="gradient (activation) checkpointing: on, off")
    parser.add_argument("--steps", type=int, default=2, help="training steps; the peak is taken over steps 2..N")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=128, help="text tokens per sample (after the image)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-target", default="attention", choices=("qv", "attention", "all-linear"))
    parser.add_argument("--tensors", action="store_true", help="also measure live tensor bytes with the profiler")
    parser.add_argument("--glibc", action="store_true", help="also measure RSS with glibc's default malloc")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.size, args.mode = args.sizes, args.modes
        print(json.dumps(worker(args)))
        return 0

    for name in args.sizes.split(","):
        model_dir(name)  # built once, outside the measured processes
    rows = []
    print(_header(args.tensors, args.glibc), flush=True)
    for name in args.sizes.split(","):
        params = _shape(name).num_params()
        for mode in args.modes.split(","):
            for ckpt in args.checkpointing.split(","):
                row = {"model": name, "params": params, "mode": mode, "checkpointing": ckpt}
                row.update(_estimates(args, name, mode, ckpt))
                row.update(_run_worker(args, name, mode, ckpt, "rss"))
                if args.tensors:
                    res = _run_worker(args, name, mode, ckpt, "tensors")
                    row.update({k: v for k, v in res.items() if k.startswith(("tensor", "window_start_tensors"))})
                if args.glibc:
                    row["glibc_measured"] = _run_worker(args, name, mode, ckpt, "glibc")["measured"]
                rows.append(row)
                print(_row_text(row), flush=True)
    if args.json:
        meta = {
            "date": datetime.date.today().isoformat(),
            "machine": _machine(),
            "command": "python benchmarks/measure_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "sizes": {k: asdict(v) for k, v in SIZES.items()},
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    import torch

    return f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
