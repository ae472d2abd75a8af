"""Fine-tune a vision-language model with LoRA / QLoRA from a recipe.

    accelerate launch scripts/sft_vlm.py recipes/quickstart.yaml
    accelerate launch scripts/sft_vlm.py recipes/llava_qlora.yaml --learning_rate 1e-4 --num_train_epochs 1

The YAML is the first argument (TRL's `--config recipe.yaml` works too); keys given on the command
line override the recipe's. All logic lives in `vlm_sft.training.train`.
"""

import sys

from vlm_sft.training.train import main

if __name__ == "__main__":
    sys.exit(main())
