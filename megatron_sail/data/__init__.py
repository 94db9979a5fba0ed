"""Data pipeline: tokenizer, chat template, image preprocessing and the
built-in synthetic captioning dataset used by the quickstart."""
