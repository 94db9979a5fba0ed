"""Verifiable and judged rewards, in a registry so RL configs name them and weigh them.

A reward scores a batch of ``Sample``s (question, response, reference) at once - batched because
the judge asks a model, and one call per rollout would serialise generation. It returns a
``RewardResult``: one score per sample in [0, 1] and how many samples it could not score
(counted as 0 and reported, never hidden).

  boxed_answer  1 when the last ``\\boxed{...}`` of the response matches the reference after
                normalisation (numbers compared as exact fractions), else 0.
  think_format  1 when the response is ``<think>`` + reasoning + ``</think>`` followed by an
                answer containing a non-empty ``\\boxed{...}``, else 0 (rule in ``think_format``).
  judge         a prompt template filled with question/answer/reference, sent to an injected
                ``ask(prompts) -> replies`` callable (a generation-backed model later), the
                reply parsed as yes/no or as a score; unparseable replies are asked again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Literal, Optional, Sequence

Ask = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Sample:
    question: str
    response: str
    reference: str


@dataclass(frozen=True)
class RewardResult:
    scores: list[float]
    unscored: int = 0  # samples whose score could not be determined (scored 0)


RewardFn = Callable[[Sequence[Sample]], RewardResult]
REWARDS: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str):
    """Register a factory ``(**options) -> RewardFn`` under ``name``."""
    def add(factory):
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is registered twice")
        REWARDS[name] = factory
        return factory
    return add


# ---- \boxed{} extraction and answer normalisation -------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces;
    None when there is none or the last one is never closed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _unwrap(text: str, command: str) -> str:
    """Replace every ``\\command{X}`` by X (balanced braces, nested allowed)."""
    pattern = re.compile(r"\\" + command + r"\s*\{")
    while True:
        m = pattern.search(text)
        if m is None:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            return text  # unbalanced: leave as is
        text = text[:m.start()] + text[m.end():i - 1] + text[i:]


def normalise_answer(text: str) -> str:
    """Strip what does not change an answer: ``$``, ``\\text{}``-like wrappers, ``\\left``/
    ``\\right``, LaTeX spacing, ``\\%``/``%``, ``^\\circ``, all whitespace, and a trailing
    period. Case is kept (``x`` and ``X`` may be different variables)."""
    text = text.replace("$", "")
    for command in ("text", "textbf", "mathrm", "mathbf", "boxed"):
        text = _unwrap(text, command)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\%", "%",
                  "^\\circ", "^{\\circ}", "\\displaystyle"):
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\s+", "", text)
    return text.rstrip(".")


_PLAIN = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")
_FRAC = re.compile(r"([+-]?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_SLASH = re.compile(r"([+-]?\d+)/(\d+)")


def as_number(text: str) -> Optional[Fraction]:
    """The exact value of a normalised answer that is one number: an integer, a decimal or
    scientific literal, ``1,000``-style thousands (only with full 3-digit groups, so ``1,2`` - a
    list - stays text), ``\\frac{a}{b}`` with numeric a, b, or ``a/b``; None otherwise."""
    if _PLAIN.fullmatch(text):
        return Fraction(text)
    if _THOUSANDS.fullmatch(text):
        return Fraction(text.replace(",", ""))
    m = _FRAC.fullmatch(text)
    if m is not None:
        sign, num_text, den_text = m.groups()
    else:
        m = _SLASH.fullmatch(text)
        if m is None:
            return None
        sign, (num_text, den_text) = "", m.groups()
    num, den = as_number(num_text), as_number(den_text)
    if num is None or den is None or den == 0:
        return None
    return (-1 if sign == "-" else 1) * num / den


def answers_match(answer: str, reference: str) -> bool:
    """Whether two answers agree: equal as numbers when both are numbers, else equal as
    normalised text. A reference written as ``\\boxed{X}`` is compared by X."""
    boxed_reference = last_boxed(reference)
    a = normalise_answer(answer)
    b = normalise_answer(boxed_reference if boxed_reference is not None else reference)
    if not a or not b:
        return False
    x, y = as_number(a), as_number(b)
    if x is not None and y is not None:
        return x == y
    return a == b


@register_reward("boxed_answer")
def boxed_answer() -> RewardFn:
    """1 when the response's last ``\\boxed{}`` matches the reference, 0 otherwise (also when
    there is no ``\\boxed{}``: an answer the grader cannot find is wrong)."""
    def score(samples: Sequence[Sample]) -> RewardResult:
        out = []
        for s in samples:
            found = last_boxed(s.response)
            out.append(1.0 if found is not None and answers_match(found, s.reference) else 0.0)
        return RewardResult(out)
    return score


# ---- think format -------------------------------------------------------------------------

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def follows_think_format(response: str) -> bool:
    """The rule: after stripping surrounding whitespace the response starts with ``<think>``,
    contains exactly one ``<think>`` and one ``</think>``, the reasoning between them is not
    blank, and the text after ``</think>`` holds a ``\\boxed{...}`` with balanced braces and
    non-blank content. (When the generation prompt already ends with ``<think>``, the caller
    prepends it to the response before scoring.)"""
    text = response.strip()
    if not text.startswith(THINK_OPEN) or text.count(THINK_OPEN) != 1 \
            or text.count(THINK_CLOSE) != 1:
        return False
    thought, _, answer = text[len(THINK_OPEN):].partition(THINK_CLOSE)
    boxed = last_boxed(answer)
    return bool(thought.strip()) and boxed is not None and bool(boxed.strip())


@register_reward("think_format")
def think_format() -> RewardFn:
    def score(samples: Sequence[Sample]) -> RewardResult:
        return RewardResult([1.0 if follows_think_format(s.response) else 0.0 for s in samples])
    return score


# ---- judge --------------------------------------------------------------------------------

DEFAULT_JUDGE_TEMPLATE = (
    "You are grading an answer to a question against a reference answer.\n"
    "Question: {question}\nReference answer: {reference}\nAnswer to grade: {answer}\n"
    "Is the answer correct? Reply with yes or no.")

Verdict = Literal["yes_no", "score"]
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w|\.\d)")  # a final period ends it
_OUT_OF = re.compile(r"(?:/|\bout of)\s*\d+(?:\.\d+)?", re.IGNORECASE)  # the scale in "7/10"


def fill_template(template: str, sample: Sample) -> str:
    """``{question}``, ``{answer}`` and ``{reference}`` replaced literally (not ``str.format``:
    answers are full of LaTeX braces)."""
    return (template.replace("{question}", sample.question)
            .replace("{reference}", sample.reference).replace("{answer}", sample.response))


def parse_verdict(reply: str, verdict: Verdict, max_score: float = 10.0) -> Optional[float]:
    """A score in [0, 1] from a judge's reply, None when it cannot be read.
    yes_no: the last standalone yes/no word decides (a reply may reason first).
    score: the last standalone number, which must lie in [0, max_score], divided by max_score;
    a scale written after it ("7/10", "7 out of 10") is not the score."""
    if verdict == "yes_no":
        words = _YES_NO.findall(reply)
        return None if not words else float(words[-1].lower() == "yes")
    numbers = _NUMBER.findall(_OUT_OF.sub("", reply))
    if not numbers:
        return None
    value = float(numbers[-1])
    return value / max_score if 0 <= value <= max_score else None


@register_reward("judge")
def judge(ask: Optional[Ask] = None, template: str = DEFAULT_JUDGE_TEMPLATE,
          verdict: Verdict = "yes_no", retries: int = 2, max_score: float = 10.0) -> RewardFn:
    """Ask ``ask`` once per sample; replies that cannot be parsed are asked again (only those)
    up to ``retries`` more times, then scored 0 and counted in ``unscored``."""
    if ask is None:
        raise ValueError("the judge reward needs a model to ask (ask=...)")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")

    def score(samples: Sequence[Sample]) -> RewardResult:
        prompts = [fill_template(template, s) for s in samples]
        scores: list[Optional[float]] = [None] * len(samples)
        pending = list(range(len(samples)))
        for _ in range(retries + 1):
            if not pending:
                break
            replies = ask([prompts[i] for i in pending])
            if len(replies) != len(pending):
                raise RuntimeError(f"the judge answered {len(replies)} of {len(pending)} prompts")
            for i, reply in zip(pending, replies):
                scores[i] = parse_verdict(reply, verdict, max_score)
            pending = [i for i in pending if scores[i] is None]
        return RewardResult([0.0 if s is None else s for s in scores], unscored=len(pending))
    return score


# ---- weighted sum -------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoredBatch:
    total: list[float]                 # weighted sum per sample: the RL reward
    parts: dict[str, list[float]]      # each reward's scores, for metrics (rl/accuracy, ...)
    unscored: dict[str, int] = field(default_factory=dict)


def build_rewards(weights: dict[str, float],
                  options: Optional[dict[str, dict]] = None,
                  ) -> Callable[[Sequence[Sample]], ScoredBatch]:
    """A scorer for the weighted sum of the named rewards; ``options[name]`` are passed to the
    reward's factory (e.g. ``{"judge": {"ask": ask}}``)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"unknown reward(s) {', '.join(unknown)} (known: {', '.join(REWARDS)})")
    options = options or {}
    fns = {name: REWARDS[name](**options.get(name, {})) for name in weights}

    def score(samples: Sequence[Sample]) -> ScoredBatch:
        results = {name: fn(samples) for name, fn in fns.items()}
        total = [sum(weights[name] * results[name].scores[i] for name in fns)
                 for i in range(len(samples))]
        return ScoredBatch(total, {n: r.scores for n, r in results.items()},
                           {n: r.unscored for n, r in results.items() if r.unscored})
    return score
