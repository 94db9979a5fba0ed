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


class SpecialTokenIds:
    """``pad_id``, ``eos_id`` and the image-block ids, looked up once through the subclass's
    ``token_id``: the same attributes for every tokenizer backend."""

    pad_id: int
    eos_id: int
    img_context_id: int
    img_start_id: int
    img_end_id: int

    def _init_special_ids(self) -> None:
        self.pad_id = self.token_id(PAD)
        self.eos_id = self.token_id(IM_END)
        self.img_context_id = self.token_id(IMG_CONTEXT)
        self.img_start_id = self.token_id(IMG_START)
        self.img_end_id = self.token_id(IMG_END)

    def token_id(self, piece: str) -> int:
        raise NotImplementedError
