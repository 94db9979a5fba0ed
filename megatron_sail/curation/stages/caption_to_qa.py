"""``caption_to_qa``: a generator turns each caption record into a QA record in the training
format - the same media, one user question (with its media placeholders) and the answer - as
the report's synthetic VQA data was made from SAIL-Caption2. The caption the QA came from is
kept in ``curation.caption``. A generator answer without a question and an answer is asked
again up to ``retries`` times, then the record is dropped with reason ``qa_unparseable``.

A Python generator is called with the record and returns ``{"question": ..., "answer": ...}``."""

from __future__ import annotations

from typing import Optional

from megatron_sail.curation import judge_prompts
from megatron_sail.curation.items import Item
from megatron_sail.curation.sources import call_function, load_function, model_client
from megatron_sail.curation.spec import PythonSource
from megatron_sail.curation.stages.base import MapStage


def qa_record(item: Item, question: str, answer: str) -> dict:
    record = {k: v for k, v in item.record.items() if k != "conversations"}
    marks = "".join("<image>\n" if kind == "image" else "<video>\n" for kind, _ in item.media_refs())
    record["conversations"] = [{"from": "human", "value": marks + question},
                               {"from": "gpt", "value": answer}]
    return record


class CaptionToQa(MapStage):
    def run(self, items: list[Item]) -> None:
        opts = self.options
        pairs = self._python(items) if isinstance(opts.source, PythonSource) else self._model(items)
        for item in items:
            pair = pairs.get(item.i)
            if pair is None:
                item.dropped(self.name, "qa_unparseable",
                             f"no question and answer after {opts.retries + 1} tries")
                continue
            item.extra["caption"] = judge_prompts.prompt_fields(item.record)["caption"]
            item.record = qa_record(item, *pair)

    def _python(self, items: list[Item]) -> dict[int, tuple[str, str]]:
        ref = self.options.source.python
        fn = load_function(ref, self.spec_dir)
        out = {}
        for item in items:
            for _ in range(self.options.retries + 1):
                got = call_function(fn, ref, item)
                if isinstance(got, dict) and all(isinstance(got.get(k), str) and got[k].strip()
                                                 for k in ("question", "answer")):
                    out[item.i] = (got["question"].strip(), got["answer"].strip())
                    break
        return out

    def _model(self, items: list[Item]) -> dict[int, tuple[str, str]]:
        opts, source = self.options, self.options.source
        client = model_client(source)
        template = opts.prompt or judge_prompts.QA_PROMPT
        out: dict[int, tuple[str, str]] = {}
        todo = list(items)
        for attempt in range(opts.retries + 1):
            if not todo:
                break
            answers = client.generate([(it, judge_prompts.render(template, it.record)) for it in todo],
                                      0.0 if attempt == 0 else source.retry_temperature,
                                      source.seed + 7919 * attempt + todo[0].i)
            left = []
            for item, answer in zip(todo, answers):
                pair: Optional[tuple[str, str]] = judge_prompts.parse_qa(answer) if answer else None
                if pair is None:
                    left.append(item)
                else:
                    out[item.i] = pair
            todo = left
        return out
