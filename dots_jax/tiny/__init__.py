"""Tiny embedded defaults: a character tokenizer with Qwen2.5 chat tokens (see `tokenizer.py`)."""
