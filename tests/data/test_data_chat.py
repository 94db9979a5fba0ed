import pytest
import torch

from megatron_sail.data.encoding.chat import encode_sample
from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer

Q, A = "Describe the image.", "a red circle on the left and a blue square on the right."


def _length(tokens: torch.Tensor, pad_id: int) -> int:
    return int((tokens != pad_id).sum())


def test_exact_template_and_padding(tokenizer: SentencePieceTokenizer) -> None:
    enc = encode_sample(tokenizer, Q, A, num_image_tokens=5, seq_length=96)
    n = _length(enc.tokens, tokenizer.pad_id)
    expected = (
        "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 5 + "</img>\n" + Q
        + "<|im_end|>\n<|im_start|>assistant\n" + A + "<|im_end|>\n"
    )
    assert tokenizer.decode(enc.tokens[:n]) == expected
    assert (enc.tokens[:n] != tokenizer.pad_id).all() and (enc.tokens[n:] == tokenizer.pad_id).all()
    for t, dtype in [(enc.tokens, torch.int64), (enc.labels, torch.int64), (enc.loss_mask, torch.float32),
                     (enc.position_ids, torch.int64)]:
        assert t.shape == (96,) and t.dtype == dtype
    assert torch.equal(enc.position_ids, torch.arange(96))


@pytest.mark.parametrize("num_image_tokens", [1, 16, 64])
def test_image_context_block(tokenizer: SentencePieceTokenizer, num_image_tokens: int) -> None:
    enc = encode_sample(tokenizer, Q, A, num_image_tokens=num_image_tokens, seq_length=128)
    tokens = enc.tokens.tolist()
    positions = [i for i, t in enumerate(tokens) if t == tokenizer.img_context_id]
    assert len(positions) == num_image_tokens
    first = positions[0]
    # Contiguous, right after "<|im_start|>user\n<img>", closed by "</img>\n" then the question.
    assert positions == list(range(first, first + num_image_tokens))
    assert tokens[:first] == [tokenizer.token_id("<|im_start|>")] + tokenizer.encode("user\n") + [tokenizer.img_start_id]
    after = tokens[first + num_image_tokens :]
    question = tokenizer.encode("\n" + Q)
    assert after[0] == tokenizer.img_end_id and after[1 : 1 + len(question)] == question
    assert tokens.count(tokenizer.img_start_id) == tokens.count(tokenizer.img_end_id) == 1


def test_labels_are_next_tokens(tokenizer: SentencePieceTokenizer) -> None:
    enc = encode_sample(tokenizer, Q, A, num_image_tokens=8, seq_length=80)
    n = _length(enc.tokens, tokenizer.pad_id)
    assert torch.equal(enc.labels[: n - 1], enc.tokens[1:n])
    assert (enc.labels[n - 1 :] == tokenizer.pad_id).all()


def test_loss_mask_covers_exactly_answer_and_im_end(tokenizer: SentencePieceTokenizer) -> None:
    enc = encode_sample(tokenizer, Q, A, num_image_tokens=8, seq_length=80)
    target = tokenizer.encode(A) + [tokenizer.eos_id]
    assert set(enc.loss_mask.tolist()) == {0.0, 1.0}
    idx = torch.nonzero(enc.loss_mask).flatten().tolist()
    assert idx == list(range(idx[0], idx[0] + len(target))), "mask must be one contiguous span"
    assert enc.labels[idx].tolist() == target
    # The masked span starts where the input is the end of the assistant header.
    prompt = tokenizer.decode(enc.tokens[: idx[0] + 1])
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    # Trailing newline and padding carry no loss.
    n = _length(enc.tokens, tokenizer.pad_id)
    assert enc.loss_mask[idx[-1] + 1 :].sum() == 0 and idx[-1] == n - 3


def test_multiple_images(tokenizer: SentencePieceTokenizer) -> None:
    enc = encode_sample(tokenizer, Q, A, num_image_tokens=3, seq_length=64, num_images=2)
    n = _length(enc.tokens, tokenizer.pad_id)
    block = "<img>" + "<IMG_CONTEXT>" * 3 + "</img>\n"
    assert tokenizer.decode(enc.tokens[:n]).startswith("<|im_start|>user\n" + block + block + Q + "<|im_end|>")


def test_text_only(tokenizer: SentencePieceTokenizer) -> None:
    enc = encode_sample(tokenizer, Q, A, num_image_tokens=16, seq_length=64, num_images=0)
    n = _length(enc.tokens, tokenizer.pad_id)
    expected = "<|im_start|>user\n" + Q + "<|im_end|>\n<|im_start|>assistant\n" + A + "<|im_end|>\n"
    assert tokenizer.decode(enc.tokens[:n]) == expected
    assert tokenizer.img_context_id not in enc.tokens.tolist()
    assert enc.labels[enc.loss_mask.bool()].tolist() == tokenizer.encode(A) + [tokenizer.eos_id]


def test_too_long_raises_with_lengths(tokenizer: SentencePieceTokenizer) -> None:
    fitting = encode_sample(tokenizer, Q, A, num_image_tokens=16, seq_length=256)
    n = _length(fitting.tokens, tokenizer.pad_id)
    exact = encode_sample(tokenizer, Q, A, num_image_tokens=16, seq_length=n)
    assert exact.tokens.shape == (n,) and exact.loss_mask.sum() == fitting.loss_mask.sum()
    with pytest.raises(ValueError, match=rf"needs {n} tokens.*seq_length is {n - 1}"):
        encode_sample(tokenizer, Q, A, num_image_tokens=16, seq_length=n - 1)


def test_invalid_image_arguments(tokenizer: SentencePieceTokenizer) -> None:
    with pytest.raises(ValueError, match="num_image_tokens"):
        encode_sample(tokenizer, Q, A, num_image_tokens=0, seq_length=64)
    with pytest.raises(ValueError, match="num_images"):
        encode_sample(tokenizer, Q, A, num_image_tokens=4, seq_length=64, num_images=-1)
