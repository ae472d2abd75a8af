"""Built-in model configs (config.json contents) so `vlm-sft estimate` runs offline for common models."""
