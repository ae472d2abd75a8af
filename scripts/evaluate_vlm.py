"""Score the base model and one or more adapters by generation on held-out data (same as `vlm-sft eval`).

    python scripts/evaluate_vlm.py --recipe recipes/quickstart.yaml --max-new-tokens 4
    python scripts/evaluate_vlm.py my-adapter other=me/llava-lora@v2 --eval-file eval.json --image-dir images

All logic lives in `vlm_sft.evaluation.generate`; the report is eval_report.json / .md / .png in --out.
"""

import sys

from vlm_sft.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
