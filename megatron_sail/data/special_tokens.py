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
    ``token_id``: the same properties for every tokenizer backend."""

    def _init_special_ids(self) -> None:
        self._pad_id = self.token_id(PAD)
        self._eos_id = self.token_id(IM_END)
        self._img_context_id = self.token_id(IMG_CONTEXT)
        self._img_start_id = self.token_id(IMG_START)
        self._img_end_id = self.token_id(IMG_END)

    def token_id(self, piece: str) -> int:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def img_context_id(self) -> int:
        return self._img_context_id

    @property
    def img_start_id(self) -> int:
        return self._img_start_id

    @property
    def img_end_id(self) -> int:
        return self._img_end_id
