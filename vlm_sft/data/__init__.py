"""Conversation data: read files (LLaVA / messages / save_to_disk / Hub), validate, report problems,
stats and sample lengths."""
