"""Step time with activation checkpointing, with and without the frozen vision tower in the backward pass.

    .venv/bin/python benchmarks/frozen_vision_backward.py

Same 18.7M LLaVA-shaped model and rows as train_throughput.py, batch 4, 4 timed steps after a
warm-up step, two interleaved runs of each variant in one process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from collator_throughput import llava_15_processor, make_rows  # noqa: E402
from train_throughput import build_model  # noqa: E402

from vlm_sft.collator import VisionSFTCollator  # noqa: E402
from vlm_sft.modeling.setup import COMPONENTS, keep_frozen_vision_tower_out_of_backward  # noqa: E402


def seconds_per_step(model, batches: list[dict]) -> float:
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for batch in batches[:1] + batches:  # the first step warms up
        start = time.perf_counter()
        model(**batch).loss.backward()
        optim.step()
        optim.zero_grad()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / (len(times) - 1)


def main() -> None:
    processor = llava_15_processor()
    rows = make_rows(16, seed=1)
    collator = VisionSFTCollator(processor)
    batches = [collator(rows[i : i + 4]) for i in range(0, 16, 4)]
    results: dict[str, list[float]] = {"vision tower in backward": [], "kept out": []}
    for keep_out in (False, True, False, True):
        model = build_model(processor)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # what the Trainer does for PEFT + checkpointing
        model.train()
        if keep_out:
            keep_frozen_vision_tower_out_of_backward(model, COMPONENTS["llava"])
        results["kept out" if keep_out else "vision tower in backward"].append(seconds_per_step(model, batches))
    for name, times in results.items():
        print(f"{name}: {', '.join(f'{t:.3f}' for t in times)} s/step")


if __name__ == "__main__":
    main()
