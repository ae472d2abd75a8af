"""`python -m vlm_sft.cli ...` is the `vlm-sft` console script."""

import sys

from vlm_sft.cli import main

sys.exit(main())
