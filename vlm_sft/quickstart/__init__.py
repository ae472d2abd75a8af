"""The embedded default: a tiny LLaVA model built locally and the scikit-learn digits."""
