"""Record + media -> token ids: tokenizers, special tokens, the chat templates and the sample
encoder (labels, loss mask, tiles, the cheap length plan)."""
