"""A tiny verifiable task that runs on CPU: count the shapes in a synthetic image.

Images come from the built-in shapes generator (``data/records/synthetic.py``), whose description names
every drawn shape, so the count is known exactly; the question asks for it as ``\\boxed{N}`` and
the ``boxed_answer`` reward checks it. The generator draws one shape (centred layout) or two
(left/right, top/bottom), so the answer is 1 or 2 - a task small models can learn, where an
untrained policy is right about half the time and RL has room to raise accuracy.

Records are in the training record format, so the same files serve as SFT warm-start data
(answer ``\\boxed{N}``, or with ``thinking`` a ``<think>`` block that lists the shapes first) and
as RL prompts (the reference is the assistant turn's ``\\boxed{N}``). Everything is a pure
function of (seed, index, image_size).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from megatron_sail.utils.atomic import staging_dir
from megatron_sail.data.records.synthetic import COLOURS, SHAPES, make_sample
from megatron_sail.rl.rewards import REWARDS, Sample, last_boxed

COUNT_QUESTION = "How many shapes are in the image? Put the final answer in \\boxed{}."
RECORDS_FILE = "records.jsonl"
IMAGES_DIR = "images"
_SHAPE_PHRASE = re.compile(r"\ba (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


@dataclass(frozen=True)
class CountSample:
    image: np.ndarray  # HxWx3 uint8
    description: str   # the generator's caption, e.g. "a red circle on the left and ..."
    count: int


def count_sample(seed: int, index: int, image_size: int) -> CountSample:
    """The ``index``-th sample: the generator's image and the number of shapes its caption
    names (one "a <colour> <shape>" phrase per drawn shape)."""
    sample = make_sample(seed, index, image_size)
    count = len(_SHAPE_PHRASE.findall(sample.answer))
    if count == 0:
        raise RuntimeError(f"the shapes generator's caption names no shape: {sample.answer!r}")
    return CountSample(sample.image, sample.answer, count)


def count_record(sample: CountSample, record_id: str, image_path: str,
                 thinking: bool = False) -> dict[str, Any]:
    """One record in the training format; ``thinking`` asks in thinking mode and answers with a
    think block that names the shapes, then the boxed count."""
    answer = f"\\boxed{{{sample.count}}}"
    record: dict[str, Any] = {"id": record_id, "image": [image_path]}
    if thinking:
        noun = "shape" if sample.count == 1 else "shapes"
        answer = (f"<think>\nI see {sample.description[:-1]}. That is {sample.count} {noun}."
                  f"\n</think>\n\n{answer}")
        record["thinking"] = True
    record["conversations"] = [{"from": "human", "value": f"<image>\n{COUNT_QUESTION}"},
                               {"from": "gpt", "value": answer}]
    return record


def reference_answer(record: dict[str, Any]) -> str:
    """The reference an RL reward compares against: the boxed count of the last assistant turn."""
    text = record["conversations"][-1]["value"]
    found = last_boxed(text)
    if found is None:
        raise ValueError(f"record {record.get('id')!r} has no \\boxed{{}} reference answer")
    return found


def write_count_task(out: str | Path, num_samples: int, seed: int = 0, image_size: int = 56,
                     thinking: bool = False) -> Path:
    """Write ``num_samples`` records and their PNG images to the new directory ``out``
    (``records.jsonl`` + ``images/``), whole or not at all; returns the JSONL path."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    out = Path(out)
    with staging_dir(out) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        lines = []
        for index in range(num_samples):
            sample = count_sample(seed, index, image_size)
            image_path = f"{IMAGES_DIR}/{index:06d}.png"
            Image.fromarray(sample.image).save(tmp / image_path)
            record = count_record(sample, f"count-{seed}-{index:06d}", image_path, thinking)
            lines.append(json.dumps(record))
        (tmp / RECORDS_FILE).write_text("\n".join(lines) + "\n")
    return out / RECORDS_FILE


def count_reward(responses: list[str], records: list[dict[str, Any]]) -> list[float]:
    """``boxed_answer`` of each response against its record's reference count."""
    samples = [Sample(COUNT_QUESTION, response, reference_answer(record))
               for response, record in zip(responses, records, strict=True)]
    return REWARDS["boxed_answer"]()(samples).scores


def count_task_texts(num_samples: int = 64, seed: int = 0) -> list[str]:
    """The task's own text (questions, boxed and thinking answers) for a tokenizer's corpus."""
    texts = [COUNT_QUESTION]
    for index in range(num_samples):
        sample = count_sample(seed, index, 28)
        for thinking in (False, True):
            texts.append(count_record(sample, "", "", thinking)["conversations"][1]["value"])
    return texts


def train_count_tokenizer(path: str | Path, vocab_size: int = 256):
    """The built-in synthetic tokenizer's corpus plus this task's text, so that ``\\boxed{N}``
    and the question encode without unknown pieces (the synthetic corpus has no backslash or
    braces). Deterministic: the same bytes on every call."""
    from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer, _train_proto, \
        synthetic_training_texts
    from megatron_sail.utils.atomic import write_bytes_atomic

    write_bytes_atomic(path, _train_proto(synthetic_training_texts() + count_task_texts(),
                                          vocab_size))
    return SentencePieceTokenizer(str(path))
