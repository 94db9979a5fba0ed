"""Rewards: \\boxed{} extraction, answer normalisation, the think-format rule, the judge."""

import pytest

from megatron_sail.rl.rewards import (REWARDS, Sample, answers_match, as_number, build_rewards,
                                      fill_template, follows_think_format, judge, last_boxed,
                                      normalise_answer, parse_verdict)


@pytest.mark.parametrize("text,expected", [
    (r"so \boxed{42}", "42"),
    (r"\boxed{1} then \boxed{2}", "2"),                       # the last one counts
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),                 # nested braces
    (r"\boxed{ {a}{b} } tail", " {a}{b} "),
    (r"\fbox{7}", "7"),
    (r"\boxed {3}", "3"),
    (r"\boxed{5} and \boxed{\frac{1}{2}", None),             # the last one is never closed
    ("no box here", None),
    (r"\boxed{}", ""),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text,expected", [
    (" $ 3.5 $ .", "3.5"),
    (r"\text{ blue }", "blue"),
    (r"\textbf{\text{A}}", "A"),
    (r"\left( 1, 2 \right)", "(1,2)"),
    (r"50\%", "50"),
    (r"90^\circ", "90"),
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    ("x", "x"),
])
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


@pytest.mark.parametrize("text,value", [
    ("12", 12), ("-3", -3), ("+2", 2), ("0.5", 0.5), (".25", 0.25), ("1e3", 1000),
    ("1,000", 1000), ("-12,345.5", -12345.5), (r"\frac{1}{2}", 0.5), (r"-\frac{3}{4}", -0.75),
    ("3/4", 0.75), ("-1/8", -0.125), (r"\frac{0.5}{2}", 0.25),
])
def test_as_number_reads_numbers(text, value):
    assert as_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1,2", "1,00", "12,3456", "x", "2x", r"\frac{x}{2}", "1/0",
                                  r"\frac{1}{0}", "", "(1,2)", "1..2"])
def test_as_number_refuses_what_is_not_one_number(text):
    assert as_number(text) is None


@pytest.mark.parametrize("answer,reference,match", [
    (r"\frac{1}{2}", "0.5", True),
    ("0.5", r"\frac{1}{2}", True),
    ("1,000", "1000", True),
    ("2.0", "2", True),
    ("1/3", "0.333", False),                 # exact comparison: 0.333 is not a third
    ("$5$.", "5", True),
    (r"\text{5}", r"\boxed{5}", True),       # a boxed reference is compared by its content
    ("1,2", "12", False),                    # a list, not a thousands number
    ("1,2", "1, 2", True),                   # compared as text after whitespace removal
    ("A", "a", False),                       # case kept
    (r"\text{Paris}", "Paris", True),
    ("", "0", False),
    ("50\\%", "50", True),
    ("-3", "3", False),
])
def test_answers_match(answer, reference, match):
    assert answers_match(answer, reference) is match


def test_boxed_answer_reward():
    score = REWARDS["boxed_answer"]()
    samples = [Sample("q", r"<think>2+2</think> The answer is \boxed{4}.", "4"),
               Sample("q", r"I think \boxed{3}, no wait, \boxed{4}", "4"),
               Sample("q", "4", "4"),                          # no \boxed{}: wrong
               Sample("q", r"\boxed{5}", "4"),
               Sample("q", r"\boxed{\frac{8}{2}}", "4")]
    assert score(samples).scores == [1.0, 1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("response,ok", [
    (r"<think>count them</think> So \boxed{3}", True),
    ("\n <think>\nx\n</think>\n\\boxed{3}\n", True),
    (r"<think></think> \boxed{3}", False),                    # blank reasoning
    (r"<think>x</think> the answer is 3", False),             # no \boxed{}
    (r"<think>x</think> \boxed{ }", False),                   # blank answer
    (r"<think>x \boxed{3}</think> done", False),              # the box is inside the thought
    (r"answer first <think>x</think> \boxed{3}", False),      # does not start with <think>
    (r"<think>x</think><think>y</think> \boxed{3}", False),    # two thoughts
    (r"<think>x \boxed{3}", False),                           # never closed
    (r"<think>x</think> \boxed{3", False),                    # unbalanced box
])
def test_think_format_rule(response, ok):
    assert follows_think_format(response) is ok
    assert REWARDS["think_format"]()([Sample("q", response, "3")]).scores == [float(ok)]


@pytest.mark.parametrize("reply,verdict,value", [
    ("Yes.", "yes_no", 1.0), ("no", "yes_no", 0.0), ("NO!", "yes_no", 0.0),
    ("The first step says no, but overall: yes", "yes_no", 1.0),   # the last word decides
    ("yesterday nobody knew", "yes_no", None),                     # whole words only
    ("maybe", "yes_no", None),
    ("Score: 7", "score", 0.7), ("I give 10/10... final 8", "score", 0.8),
    ("I give it 7/10", "score", 0.7), ("7 out of 10.", "score", 0.7),
    ("Score: 3 / 10", "score", 0.3), ("Score: 7.", "score", 0.7), ("v2 says 9", "score", 0.9),
    ("score 11", "score", None), ("score -", "score", None), ("7.5", "score", 0.75),
])
def test_parse_verdict(reply, verdict, value):
    assert parse_verdict(reply, verdict) == value


def test_fill_template_keeps_latex_braces():
    s = Sample("What is {x}?", r"\boxed{\frac{1}{2}}", "0.5")
    assert fill_template("Q={question} A={answer} R={reference}", s) == \
        r"Q=What is {x}? A=\boxed{\frac{1}{2}} R=0.5"


def test_judge_retries_only_unparsed_replies_then_counts_them():
    calls = []
    scripted = [["yes", "hmm", "no", "???"], ["no", "still unsure"], ["cannot say"]]

    def ask(prompts):
        calls.append(list(prompts))
        return scripted[len(calls) - 1]

    samples = [Sample(f"q{i}", f"a{i}", f"r{i}") for i in range(4)]
    result = judge(ask=ask, template="{question}|{answer}|{reference}", retries=2)(samples)
    assert result.scores == [1.0, 0.0, 0.0, 0.0]
    assert result.unscored == 1
    assert calls == [["q0|a0|r0", "q1|a1|r1", "q2|a2|r2", "q3|a3|r3"],
                     ["q1|a1|r1", "q3|a3|r3"], ["q3|a3|r3"]]
    with pytest.raises(ValueError, match="ask"):
        judge()
    with pytest.raises(RuntimeError, match="answered 1 of 2"):
        judge(ask=lambda p: ["yes"])(samples[:2])


def test_weighted_sum_and_parts():
    score = build_rewards({"boxed_answer": 1.0, "think_format": 0.5, "judge": 0.25},
                          {"judge": {"ask": lambda p: ["yes"] * len(p)}})
    samples = [Sample("q", r"<think>x</think> \boxed{2}", "2"),   # 1 + 0.5 + 0.25
               Sample("q", r"\boxed{2}", "3")]                     # 0 + 0 + 0.25
    out = score(samples)
    assert out.total == [1.75, 0.25]
    assert out.parts["boxed_answer"] == [1.0, 0.0]
    assert out.unscored == {}
    with pytest.raises(ValueError, match="unknown reward"):
        build_rewards({"bleu": 1.0})
