"""Training throughput on CPU, side by side in one run: our pipeline vs the lesson's (pad every sample to 2,048).

    .venv/bin/python benchmarks/train_throughput.py              # the numbers in benchmarks/README.md
    .venv/bin/python benchmarks/train_throughput.py --steps 2    # a quick look

Same LLaVA-shaped model (CLIP ViT at 336 px -> 576 image tokens, Llama text; tens of millions of
parameters, random weights built from config), same rows (640x480 photo-like images, one-to-three
turn conversations with replies of mixed length), batch 4, LoRA on the language model, AdamW.

1. Useful (non-padding) tokens per second: ours (dynamic padding, optionally length-grouped
   batches) vs the lesson's (each sample padded to max_length=2048 in the dataset).
2. Padding fraction of the batch tokens for each.
3. Pipeline overhead: step time through dataset + collator + DataLoader vs bare forward+backward
   on batches collated beforehand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from collator_throughput import llava_15_processor, make_rows  # noqa: E402

from vlm_sft.collator import IGNORE_INDEX, VisionSFTCollator  # noqa: E402


def build_model(processor, text_hidden: int = 512, text_layers: int = 4):
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            image_size=336, patch_size=14, projection_dim=256,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=text_hidden * 3,
            num_hidden_layers=text_layers, num_attention_heads=8, num_key_value_heads=8,
            max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
        ),
        image_token_id=processor.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules=r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj)",
        modules_to_save=["model.multi_modal_projector"],
    )  # fmt: skip
    return get_peft_model(model, lora)


class LessonDataset(torch.utils.data.Dataset):
    """The seed lesson's recipe, re-expressed: one processor call per sample, padded to max_length, the
    loss masked up to the first "ASSISTANT:" (first turn only, as the lesson does)."""

    def __init__(self, rows, processor, max_length: int = 2048):
        self.rows, self.processor, self.max_length = rows, processor, max_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int) -> dict:
        row = self.rows[idx]
        user, reply = row["messages"][0], row["messages"][1]
        question = "".join(p.get("text", "") for p in user["content"])
        prompt = f"USER: <image>\n{question}\nASSISTANT: {reply['content'][0]['text']}"
        inputs = self.processor(
            text=prompt, images=row["images"][0], return_tensors="pt", padding="max_length",
            max_length=self.max_length, truncation=True,
        )  # fmt: skip
        labels = inputs["input_ids"].clone()
        marker = self.processor.tokenizer.encode("ASSISTANT:", add_special_tokens=False)
        ids = inputs["input_ids"][0].tolist()
        for i in range(len(ids)):
            if ids[i : i + len(marker)] == marker:
                labels[0, : i + len(marker)] = IGNORE_INDEX
                break
        return {k: v.squeeze(0) for k, v in {**inputs, "labels": labels}.items()}


def train_steps(model, batches, steps: int) -> tuple[float, int, int]:
    """Seconds, useful tokens and batch tokens for `steps` optimizer steps (after one warm-up step)."""
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    it = iter(batches)
    useful = total = 0
    start = None
    for step in range(steps + 1):
        if step == 1:
            start, useful, total = time.perf_counter(), 0, 0
        batch = next(it)
        useful += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
        model(**batch).loss.backward()
        optim.step()
        optim.zero_grad()
    return time.perf_counter() - start, useful, total


def length_grouped(rows, collator, batch_size: int, seed: int = 0) -> list[list[dict]]:
    """Batches of similar length (sorted within shuffled mega-batches of 16 batches, as transformers does)."""
    lengths = collator.sample_lengths(rows)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows), generator=g).tolist()
    mega = batch_size * 16
    batches = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i : i + mega], key=lambda j: -lengths[j])
        batches += [[rows[j] for j in chunk[k : k + batch_size]] for k in range(0, len(chunk), batch_size)]
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for our pipeline")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    processor = llava_15_processor()
    n = args.batch_size * (args.steps + 1)
    rows = make_rows(max(n, 64), seed=1)
    collator = VisionSFTCollator(processor)
    model = build_model(processor)
    params = sum(p.numel() for p in model.parameters())

    def loader(data, collate, workers=0, shuffle=True, batch_size=args.batch_size):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=workers, generator=torch.Generator().manual_seed(0))  # fmt: skip

    results = {}
    # Ours, through the real pipeline: rows -> collator in DataLoader workers -> step. Unshuffled, so
    # the bare baseline below steps through exactly the same batches.
    t, useful, total = train_steps(model, loader(rows, collator, args.workers, shuffle=False), args.steps)
    results["ours"] = {"seconds": t, "useful": useful, "total": total}
    # Ours with length-grouped batches.
    grouped = length_grouped(rows, collator, args.batch_size)
    grouped_loader = loader(grouped, lambda b: collator(b[0]), args.workers, batch_size=1)  # items are batches
    t, useful, total = train_steps(model, grouped_loader, args.steps)
    results["ours_grouped"] = {"seconds": t, "useful": useful, "total": total}
    # Bare forward+backward on batches collated beforehand (the pipeline-overhead baseline).
    pre = [collator(rows[i : i + args.batch_size]) for i in range(0, n, args.batch_size)]
    t, useful, total = train_steps(model, pre, args.steps)
    results["bare_precollated"] = {"seconds": t, "useful": useful, "total": total}
    # The lesson's: every sample padded to 2,048 tokens in the dataset, default collate.
    t, useful, total = train_steps(model, loader(LessonDataset(rows, processor), None, args.workers), args.steps)
    results["lesson_pad_2048"] = {"seconds": t, "useful": useful, "total": total}

    for r in results.values():
        r["useful_tokens_per_second"] = round(r["useful"] / r["seconds"], 1)
        r["padding_fraction"] = round(1 - r["useful"] / r["total"], 3)
        r["seconds_per_step"] = round(r["seconds"] / args.steps, 3)
    summary = {
        "date": str(date.today()),
        "machine": f"{platform.machine()} cores={os.cpu_count()} torch={torch.__version__}",
        "model_parameters": params,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "dataloader_workers": args.workers,
        "results": results,
        "ours_vs_lesson_useful_tokens_per_second": round(
            results["ours"]["useful_tokens_per_second"] / results["lesson_pad_2048"]["useful_tokens_per_second"], 2
        ),
        "pipeline_overhead": round(
            results["ours"]["seconds_per_step"] / results["bare_precollated"]["seconds_per_step"] - 1, 3
        ),
    }
    print(f"model: {params / 1e6:.1f}M parameters; batch {args.batch_size}; {args.steps} timed steps each")
    print("| pipeline | useful tokens/s | padding | s/step |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['useful_tokens_per_second']} | {r['padding_fraction']:.1%} | {r['seconds_per_step']} |")
    print(f"ours / lesson useful tokens/s = {summary['ours_vs_lesson_useful_tokens_per_second']}x; "
          f"pipeline overhead vs bare steps = {summary['pipeline_overhead']:+.1%}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
