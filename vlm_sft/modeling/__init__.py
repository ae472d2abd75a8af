"""The model: family map, loading (16-bit or k-bit), frozen vision tower, LoRA on the language model,
parameter report, memory estimate."""
