"""The Hub: adapters by id or folder, push, merge, and the model card."""
