"""SAIL-VL2 special token strings, shared by the tokenizer and chat template."""

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn, doubles as eos
THINK_START = "<think>"
THINK_END = "</think>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS: tuple[str, ...] = (IMG_START, IMG_END, IMG_CONTEXT, IM_START, IM_END, THINK_START, THINK_END, PAD)
