"""The lesson's LoRA exercise: r in {4, 16, 64} x targets {q, v} / {q, k, v, o}, one training run each.

    vlm-sft quickstart prepare          # the tiny model and digits the default base recipe trains on
    python scripts/sweep_lora.py recipes/sweeps/lora_rank_targets.yaml
    python scripts/sweep_lora.py recipes/sweeps/lora_rank_targets.yaml --num_train_epochs 1 --only r4-qv,r64-qv

The same as `vlm-sft sweep`. Writes sweep.png, sweep.md and sweep.json into the sweep's output_dir. All logic lives
in `vlm_sft.evaluation.sweep`.
"""

import sys

from vlm_sft.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
