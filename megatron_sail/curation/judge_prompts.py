"""The judges' questions and the parsers of their answers.

SAIL-VL2's report scores captions on two criteria, visual-information richness and image-text
alignment, from 1 to 5, plus a yes/no judgement, and drops a caption scoring below 3 or judged
"No"; video QA is scored for alignment, richness and difficulty (kept at >= 5, >= 5, >= 3).
The report does not publish its prompt texts: the prompts below are ours, written to ask for
exactly those scales, and each names the answer form its parser accepts.

Placeholders: ``{caption}`` (the last assistant turn), ``{question}`` (the first user turn,
media placeholders removed) and ``{answer}`` (the last assistant turn).
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Union

Score = Union[int, str]

_SCALE = " Reply with a single digit from 1 to 5 and nothing else."

PROMPTS: dict[str, tuple[str, str]] = {
    "richness": (
        "Rate the visual-information richness of this caption for the image: how many of the "
        "image's objects, attributes, relations, text and details it describes. 1 means almost "
        "nothing is described, 5 means the visual content is described thoroughly.\n"
        "Caption: {caption}\n" + _SCALE.strip(), "score_1_5"),
    "alignment": (
        "Rate how well this caption agrees with the image: 1 means it describes things that "
        "are not there or gets them wrong, 5 means every statement matches the image.\n"
        "Caption: {caption}\n" + _SCALE.strip(), "score_1_5"),
    "acceptable": (
        "Is this caption an accurate and informative description of the image, suitable for "
        "training? Caption: {caption}\nAnswer Yes or No.", "yes_no"),
    "video_alignment": (
        "Rate how well the question and answer agree with the video: 1 means they concern "
        "content that is not in the video or the answer is wrong, 5 means both are fully "
        "grounded in the video and correct.\nQuestion: {question}\nAnswer: {answer}\n"
        + _SCALE.strip(), "score_1_5"),
    "video_richness": (
        "Rate how much of the video's content the answer conveys: 1 means a bare word with no "
        "visual detail, 5 means a detailed answer covering the relevant events, objects and "
        "their changes over time.\nQuestion: {question}\nAnswer: {answer}\n" + _SCALE.strip(),
        "score_1_5"),
    "video_difficulty": (
        "Rate how hard the question is to answer from the video: 1 means it can be answered from "
        "a single glance or without the video, 5 means it needs careful temporal reasoning "
        "across the whole clip.\nQuestion: {question}\nAnswer: {answer}\n" + _SCALE.strip(),
        "score_1_5"),
}

QA_PROMPT = ("Here is a detailed description of an image:\n{caption}\n"
             "Write one question about the image that this description answers, and its answer. "
             "Reply exactly in the form:\nQuestion: <the question>\nAnswer: <the answer>")


def score_1_5(text: str) -> Optional[int]:
    """The answer's score when it is a lone digit 1-5 (optionally with a trailing period or a
    "/5"); anything else - another number, several digits, prose - is unparseable."""
    match = re.fullmatch(r"\s*(?:score\s*[:=]?\s*)?([1-5])\s*(?:/\s*5)?\s*\.?\s*", text, re.IGNORECASE)
    return int(match.group(1)) if match else None


def yes_no(text: str) -> Optional[str]:
    """"yes" or "no" when the answer starts with that word; otherwise unparseable."""
    match = re.match(r"\s*(yes|no)\b", text, re.IGNORECASE)
    return match.group(1).lower() if match else None


PARSERS: dict[str, Callable[[str], Optional[Score]]] = {"score_1_5": score_1_5, "yes_no": yes_no}


def parse_qa(text: str) -> Optional[tuple[str, str]]:
    """(question, answer) from ``Question: ...`` / ``Answer: ...``; None when either is
    missing or empty."""
    match = re.search(r"question\s*:\s*(.+?)\s*answer\s*:\s*(.+)", text, re.IGNORECASE | re.DOTALL)
    if not match:
        return None
    question, answer = match.group(1).strip(), match.group(2).strip()
    return (question, answer) if question and answer else None


def prompt_fields(record: dict) -> dict[str, str]:
    """The placeholder values of a training-format record."""
    turns = [t for t in record.get("conversations") or [] if isinstance(t, dict)]
    users = [str(t.get("value", "")) for t in turns if t.get("from") in ("human", "user")]
    answers = [str(t.get("value", "")) for t in turns if t.get("from") in ("gpt", "assistant")]
    question = re.sub(r"<(image|video)>\n?", "", users[0]).strip() if users else ""
    last = answers[-1] if answers else ""
    return {"caption": last, "question": question, "answer": last}


def render(template: str, record: dict) -> str:
    values = prompt_fields(record)
    return re.sub(r"\{(caption|question|answer)\}", lambda m: values[m.group(1)], template)
