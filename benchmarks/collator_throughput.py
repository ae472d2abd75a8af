"""Collation throughput: VisionSFTCollator vs TRL's DataCollatorForVisionLanguageModeling, side by side in one run.

    .venv/bin/python benchmarks/collator_throughput.py            # 512 rows, batch 8
    .venv/bin/python benchmarks/collator_throughput.py --rows 64  # a quick look

A LLaVA-1.5-size processor built locally: CLIP image processing at 336 px of 640x480 photos
(576 image tokens per image), the llava-1.5 chat template (TRL gets the copy with generation
markers it needs for assistant-only loss), replies of mixed length. The bound is one plain
`processor(text=..., images=...)` call per batch on pre-rendered text, and the image processor
alone. Each contender runs `--repeats` times interleaved; the best pass counts (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from collections.abc import Callable
from datetime import date

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from vlm_sft.collator import IGNORE_INDEX, VisionSFTCollator
from vlm_sft.quickstart.tiny_model import LLAVA_15_CHAT_TEMPLATE, build_tokenizer

# llava-hf/llava-1.5-7b-hf's template with generation markers, as pinned in transformers' tests.
LLAVA_15_TRAINING_TEMPLATE = LLAVA_15_CHAT_TEMPLATE.replace(
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}",
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}",
)
WORDS = "the screwdriver multimeter is on off bench red green bolt nut gauge reads bar three four tool".split()


def llava_15_processor() -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(["<image>"], vocab_size=2000),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_15_CHAT_TEMPLATE,
    )


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """640x480 photo-like images (smooth noise) and one-to-three-turn conversations with mixed-length replies."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        small = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((640, 480), Image.BILINEAR)
        messages = []
        for turn in range(int(rng.integers(1, 4))):
            question = " ".join(rng.choice(WORDS, int(rng.integers(4, 12))))
            reply = " ".join(rng.choice(WORDS, int(rng.integers(1, 60))))
            content = [{"type": "text", "text": question + "?"}]
            if turn == 0:
                content.insert(0, {"type": "image"})
            messages += [
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": reply}]},
            ]
        rows.append({"images": [image], "messages": messages})
    return rows


def throughput(fn: Callable[[list[dict]], object], rows: list[dict], batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        fn(rows[i : i + batch_size])
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    processor = llava_15_processor()
    rows = make_rows(args.rows)
    ours = VisionSFTCollator(processor)
    trl = DataCollatorForVisionLanguageModeling(
        processor, assistant_only_loss=True, chat_template=LLAVA_15_TRAINING_TEMPLATE
    )
    texts = {id(r): processor.apply_chat_template(r["messages"]) for r in rows}

    def plain(batch):  # the bound: one processor call on already-rendered text
        return processor(text=[texts[id(r)] for r in batch], images=[r["images"] for r in batch], padding=True,
                         return_tensors="pt")  # fmt: skip

    def images_only(batch):
        return processor.image_processor([img for r in batch for img in r["images"]], return_tensors="pt")

    contenders = {"vlm_sft VisionSFTCollator": ours, "TRL DataCollatorForVisionLanguageModeling": trl,
                  "plain processor call": plain, "image processor alone": images_only}  # fmt: skip
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            best[name] = max(best[name], throughput(fn, rows, args.batch_size))

    # Masks compared on the first batches: same tokens? where do trained positions differ and why?
    a, b = ours(rows[:8]), trl(rows[:8])
    ours_trained = int((a["labels"] != IGNORE_INDEX).sum())
    trl_trained = int((b["labels"] != IGNORE_INDEX).sum())
    eos_added = int((a["labels"] == processor.tokenizer.eos_token_id).sum())
    # Input ids differ (ours inserts </s>), so compare the trained tokens as multisets.
    tokens = processor.tokenizer.convert_ids_to_tokens
    ours_set = Counter(tokens(a["labels"][a["labels"] != IGNORE_INDEX].tolist()))
    trl_set = Counter(tokens(b["labels"][b["labels"] != IGNORE_INDEX].tolist()))

    ours_rate, trl_rate = best["vlm_sft VisionSFTCollator"], best["TRL DataCollatorForVisionLanguageModeling"]
    result = {
        "date": str(date.today()),
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}",
        "rows": args.rows,
        "batch_size": args.batch_size,
        "samples_per_second": {k: round(v, 1) for k, v in best.items()},
        "ours_vs_trl": round(ours_rate / trl_rate, 2),
        "ours_vs_plain_processor": round(ours_rate / best["plain processor call"], 3),
        "trained_tokens_first_batch": {
            "ours": ours_trained,
            "trl": trl_trained,
            "eos_added_by_ours": eos_added,
            "only_ours": dict(ours_set - trl_set),
            "only_trl": dict(trl_set - ours_set),
        },
    }
    print("| collator | samples/s |\n|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.1f} |")
    ratio_plain = result["ours_vs_plain_processor"]
    print(f"\nours / TRL = {result['ours_vs_trl']}x; ours / plain processor call = {ratio_plain:.0%}")
    print(f"trained tokens, first batch: ours {ours_trained} (incl. {eos_added} </s> the template omits), ", end="")
    print(f"TRL {trl_trained}")
    print(f"trained by ours only: {dict(ours_set - trl_set)}; by TRL only: {dict(trl_set - ours_set)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
