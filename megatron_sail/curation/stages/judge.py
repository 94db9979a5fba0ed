"""``judge``: named scores per record from a Python function or a checkpoint, each with its
keep rule. A judge answer that does not parse (a model rambling instead of giving a digit, a
function returning no usable value) is asked again up to ``retries`` times - a model with
sampling at ``retry_temperature``, since greedy decoding would repeat itself - and a record
still without every score is dropped with reason ``judge_unparseable``: never scored by
guesswork."""

from __future__ import annotations

from typing import Any, Optional

from megatron_sail.curation import judge_prompts
from megatron_sail.curation.items import Item
from megatron_sail.curation.keep import fits, passes, rule_text
from megatron_sail.curation.sources import call_function, load_function, model_client
from megatron_sail.curation.spec import PythonSource
from megatron_sail.curation.stages.base import MapStage
from megatron_sail.errors import shown

UNPARSEABLE = "judge_unparseable"


def usable(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) or \
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


class Judge(MapStage):
    def run(self, items: list[Item]) -> None:
        opts = self.options
        # (scores by item, the last unusable answer by item): returned, not kept on the stage,
        # which threads of one process share.
        scores, last_answers = (self._python(items) if isinstance(opts.source, PythonSource)
                                else self._model(items))
        for item in items:
            got = scores.get(item.i)
            if got is None:
                names = ", ".join(opts.prompts or opts.keep)
                last = last_answers.get(item.i)
                item.dropped(self.name, UNPARSEABLE, f"no usable {names} after {opts.retries + 1} "
                             f"tries" + (f"; last answer {shown(last, 120)}" if last is not None else ""))
                continue
            item.scores.update(got)
            for name, rule in opts.keep.items():
                if not passes(got[name], rule):
                    item.dropped(self.name, f"{name} not {rule_text(rule)}")
                    break

    def _python(self, items: list[Item]) -> tuple[dict[int, dict], dict[int, Any]]:
        ref = self.options.source.python
        fn = load_function(ref, self.spec_dir)
        out, last = {}, {}
        for item in items:
            for _ in range(self.options.retries + 1):
                result = call_function(fn, ref, item)
                if isinstance(result, dict) and all(fits(result.get(k), rule)
                                                    for k, rule in self.options.keep.items()):
                    out[item.i] = {str(k): v for k, v in result.items() if usable(v)}
                    break
                last[item.i] = result
        return out, last

    def _model(self, items: list[Item]) -> tuple[dict[int, dict], dict[int, Any]]:
        opts, source = self.options, self.options.source
        client = model_client(source)
        parsed: dict[int, dict] = {item.i: {} for item in items}
        last: dict[int, Any] = {}
        todo = [(item, name) for item in items for name in opts.prompts]
        for attempt in range(opts.retries + 1):
            if not todo:
                break
            requests = [(item, judge_prompts.render(opts.prompts[name][0], item.record))
                        for item, name in todo]
            temperature = 0.0 if attempt == 0 else source.retry_temperature
            # The seed ties the sampled retries to the chunk, so a rerun repeats them exactly.
            answers = client.generate(requests, temperature, source.seed + 7919 * attempt + todo[0][0].i)
            left = []
            for (item, name), answer in zip(todo, answers):
                value: Optional[Any] = None
                if answer is not None:
                    value = judge_prompts.PARSERS[opts.prompts[name][1]](answer)
                if value is None:
                    left.append((item, name))
                    last[item.i] = answer if answer is not None else "(no prompt: media unreadable)"
                else:
                    parsed[item.i][name] = value
            todo = left
        return {i: got for i, got in parsed.items() if len(got) == len(opts.prompts)}, last
