"""vlm-sft: teach a pretrained vision-language model about your world with LoRA / QLoRA."""

__version__ = "0.1.0"
