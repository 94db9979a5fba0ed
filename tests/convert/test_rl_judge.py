"""The ``judge`` reward end to end: a tiny imported checkpoint asked through the generation API
(``sail generate``'s rank processes). Its verdicts are not meaningful; what is checked is that
each rollout's judge score is what ``sail generate`` answers to the same filled-in prompt,
parsed - the reward asks the model what the user would."""

from __future__ import annotations

import shutil

from megatron_sail import cli
from tests.convert.test_generate_cli import spm  # noqa: F401  (the fixture)
from megatron_sail.rl.judge import checkpoint_ask
from megatron_sail.rl.rewards import DEFAULT_JUDGE_TEMPLATE, REWARDS, Sample, fill_template, \
    parse_verdict

SAMPLES = [Sample(question="How many shapes are in the image?", response="\\boxed{2}",
                  reference="\\boxed{2}"),
           Sample(question="What colour is the circle?", response="It is blue.",
                  reference="red")]


def test_judge_reward_asks_a_checkpoint(imported, spm, tmp_path, capfd):
    # A copy of the checkpoint with the tokenizer a run keeps next to its checkpoints (the
    # imported tiny release names none), so the judge finds it as it would in a trained run.
    run = tmp_path / "judge"
    shutil.copytree(imported("fp32"), run / "checkpoints")
    shutil.copy(spm.model_path, run / "tokenizer.model")
    ckpt = str(run / "checkpoints")
    ask = checkpoint_ask(ckpt, max_new_tokens=4)
    score = REWARDS["judge"](ask=ask, template=DEFAULT_JUDGE_TEMPLATE, verdict="yes_no",
                             retries=0)(SAMPLES)
    assert len(score.scores) == 2 and all(s in (0.0, 1.0) for s in score.scores)

    capfd.readouterr()
    verdicts = []
    for sample, got in zip(SAMPLES, score.scores):
        assert cli.main(["generate", "--ckpt", ckpt, "--prompt",
                         fill_template(DEFAULT_JUDGE_TEMPLATE, sample),
                         "--max-new-tokens", "4"]) == 0
        answer = capfd.readouterr().out.strip()
        verdicts.append(parse_verdict(answer, "yes_no"))
        assert got == (0.0 if verdicts[-1] is None else verdicts[-1]), answer
    assert score.unscored == sum(v is None for v in verdicts)   # unreadable: scored 0, counted
