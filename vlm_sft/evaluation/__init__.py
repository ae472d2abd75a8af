"""Evaluation: answers by generation, metrics, reports, plots and the LoRA sweep."""
