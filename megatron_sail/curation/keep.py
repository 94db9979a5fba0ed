"""Keep rules on named scores: ``">= 3"``, ``"> 0.5"``, ``"== yes"``, ``"!= no"``."""

from __future__ import annotations

import operator
import re
from typing import Any, Callable, Union

_RULE = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne}


def parse_rule(rule: Any) -> tuple[str, Union[float, str]]:
    """(operator, value): a number when the value reads as one; words only with == and !=."""
    if isinstance(rule, bool) or not isinstance(rule, (str, int, float)):
        raise ValueError(f"a rule is text like '>= 3' or '== yes', got {rule!r}")
    if isinstance(rule, (int, float)):
        return "==", float(rule)
    match = _RULE.fullmatch(rule)
    if not match:
        raise ValueError(f"{rule!r} is not a rule like '>= 3' or '== yes'")
    op, text = match.groups()
    try:
        return op, float(text)
    except ValueError:
        if op not in ("==", "!="):
            raise ValueError(f"{rule!r}: {op} compares numbers, not {text!r}") from None
        return op, text.lower()


def passes(score: Any, rule: Any) -> bool:
    """Whether ``score`` satisfies ``rule``; a score of the wrong kind (a word against a number
    rule) never does."""
    op, value = parse_rule(rule)
    if isinstance(value, float):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return False
        return _OPS[op](float(score), value)
    return _OPS[op](str(score).lower(), value)


def rule_text(rule: Any) -> str:
    op, value = parse_rule(rule)
    return f"{op} {value:g}" if isinstance(value, float) else f"{op} {value}"


def fits(score: Any, rule: Any) -> bool:
    """Whether ``score`` is the kind of value ``rule`` compares: a number for a number rule,
    a non-empty word for a word rule (anything else is an unparseable judgement)."""
    _, value = parse_rule(rule)
    if isinstance(value, float):
        return isinstance(score, (int, float)) and not isinstance(score, bool) and score == score
    return isinstance(score, str) and bool(score.strip())
