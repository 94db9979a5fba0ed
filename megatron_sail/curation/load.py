"""Reading and validating a curation spec file into ``CurationSpec`` (``spec.py``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from megatron_sail.curation import judge_prompts
from megatron_sail.curation.keep import parse_rule
from megatron_sail.curation.spec import (
    OPTION_CLASSES, CaptionToQa, CurationSpec, Judge, ModelSource, PythonSource, Rebalance,
    SpecError, StageSpec, build, resolve_path,
)
from megatron_sail.errors import shown

_TOP_KEYS = ("inputs", "stages", "chunk_size")
_PYTHON_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _source(raw: Any, where: str, base: Path, problems: list[str]):
    """``{python: "mod:fn"}`` or ``{checkpoint: DIR, ...}``; a bare string is a checkpoint."""
    if isinstance(raw, str):
        raw = {"checkpoint": raw}
    if not isinstance(raw, dict) or ("python" in raw) == ("checkpoint" in raw):
        problems.append(f"{where}: must be {{python: 'module:function'}} or "
                        f"{{checkpoint: DIR, ...}}, got {shown(raw)}")
        return None
    if "python" in raw:
        kwargs = build(PythonSource, raw, where, problems)
        ref = kwargs.get("python")
        if ref is not None and not _PYTHON_REF.fullmatch(ref):
            problems.append(f"{where}: python={shown(ref)} must be 'module:function'")
            return None
        return PythonSource(**kwargs) if len(kwargs) == len(raw) else None
    kwargs = build(ModelSource, raw, where, problems)
    if len(kwargs) != len(raw):
        return None
    kwargs["checkpoint"] = resolve_path(kwargs["checkpoint"], base)
    if kwargs.get("tokenizer"):
        kwargs["tokenizer"] = resolve_path(kwargs["tokenizer"], base)
    return ModelSource(**kwargs)


def _judge(raw: dict, where: str, base: Path, problems: list[str]) -> Judge | None:
    n = len(problems)
    kwargs = build(Judge, {k: v for k, v in raw.items() if k not in ("judge", "prompts")},
                   where, problems, skip=("source", "prompts"))
    if "judge" not in raw:
        problems.append(f"{where}: missing key 'judge' ({{python: 'module:function'}} or "
                        f"{{checkpoint: DIR}})")
        return None
    source = _source(raw["judge"], f"{where}: judge", base, problems)
    prompts = {}
    if isinstance(source, ModelSource):
        prompts = _prompts(raw.get("prompts"), where, problems)
    elif "prompts" in raw:
        problems.append(f"{where}: prompts are for model judges (a Python judge returns its scores)")
    keep = kwargs.get("keep")
    if isinstance(keep, dict):
        if not keep:
            problems.append(f"{where}: keep needs at least one rule (score: '>= 3')")
        for name, rule in keep.items():
            try:
                parse_rule(rule)
            except ValueError as exc:
                problems.append(f"{where}: keep.{name}: {exc}")
            if prompts and name not in prompts:
                problems.append(f"{where}: keep.{name}: no prompt scores {shown(name)} "
                                f"(prompts: {', '.join(prompts)})")
    if len(problems) != n or source is None:
        return None
    return Judge(source=source, prompts=prompts, **kwargs)


def _prompts(raw: Any, where: str, problems: list[str]) -> dict:
    """Score name -> (template, parser name). A list names built-in prompts; a mapping gives
    ``{prompt: TEXT, parser: score_1_5 | yes_no}`` per score (or a built-in's name)."""
    if raw is None:
        problems.append(f"{where}: a model judge needs prompts (built-in: "
                        f"{', '.join(judge_prompts.PROMPTS)})")
        return {}
    items = {name: name for name in raw} if isinstance(raw, list) else raw
    if not isinstance(items, dict) or not items:
        problems.append(f"{where}: prompts must be a list of built-in names or a mapping")
        return {}
    out = {}
    for name, value in items.items():
        if isinstance(value, str) and value in judge_prompts.PROMPTS:
            out[str(name)] = judge_prompts.PROMPTS[value]
        elif isinstance(value, dict) and isinstance(value.get("prompt"), str) \
                and value.get("parser") in judge_prompts.PARSERS and len(value) == 2:
            out[str(name)] = (value["prompt"], value["parser"])
        else:
            problems.append(f"{where}: prompts.{name}={shown(value)} must be a built-in prompt "
                            f"({', '.join(judge_prompts.PROMPTS)}) or {{prompt: TEXT, parser: "
                            f"{' | '.join(judge_prompts.PARSERS)}}}")
    return out


def _rebalance(raw: dict, where: str, problems: list[str]) -> Rebalance | None:
    n = len(problems)
    kwargs = build(Rebalance, raw, where, problems)
    target = kwargs.get("target", "uniform")
    if isinstance(target, str) and target != "uniform":
        problems.append(f"{where}: target={shown(target)} must be 'uniform' or a mapping "
                        f"category: weight")
    if isinstance(target, dict):
        bad = {k: v for k, v in target.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
        if bad or not any(v > 0 for v in target.values() if not isinstance(v, bool)):
            problems.append(f"{where}: target weights must be numbers >= 0, at least one > 0, "
                            f"got {shown(target)}")
    if kwargs.get("by") == "ngrams" and kwargs.get("max_per_ngram") is None:
        problems.append(f"{where}: by: ngrams needs max_per_ngram (the count above which an "
                        f"n-gram's captions are subsampled)")
    if len(problems) != n:
        return None
    if isinstance(target, dict):
        kwargs["target"] = {str(k): float(v) for k, v in target.items()}
    return Rebalance(**kwargs)


def _stage(index: int, raw: Any, base: Path, problems: list[str]) -> StageSpec | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        problems.append(f"stages[{index}]: must be a mapping with a 'name' "
                        f"({', '.join(OPTION_CLASSES)}), got {shown(raw)}")
        return None
    name = raw["name"]
    where = f"stages[{index}] ({name})"
    if name not in OPTION_CLASSES:
        problems.append(f"stages[{index}]: unknown stage {shown(name)} "
                        f"(known: {', '.join(OPTION_CLASSES)})")
        return None
    body = {k: v for k, v in raw.items() if k != "name"}
    if name == "judge":
        options = _judge(body, where, base, problems)
    elif name == "rebalance":
        options = _rebalance(body, where, problems)
    elif name == "caption_to_qa":
        n = len(problems)
        kwargs = build(CaptionToQa, {k: v for k, v in body.items() if k != "generator"},
                       where, problems, skip=("source",))
        source = _source(body.get("generator"), f"{where}: generator", base, problems) \
            if "generator" in body else problems.append(f"{where}: missing key 'generator'")
        options = CaptionToQa(source=source, **kwargs) if len(problems) == n else None
    else:
        n = len(problems)
        kwargs = build(OPTION_CLASSES[name], body, where, problems)
        options = OPTION_CLASSES[name](**kwargs) if len(problems) == n else None
    return None if options is None else StageSpec(name, options, where)


def load_spec(path: str | Path) -> CurationSpec:
    path = Path(path).absolute()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read the spec ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping with inputs and stages")
    problems = [f"unknown key {shown(k)} (known: {', '.join(_TOP_KEYS)})"
                for k in raw if k not in _TOP_KEYS]
    inputs = raw.get("inputs")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or \
            not all(isinstance(i, str) and i for i in inputs):
        problems.append(f"inputs: must be a non-empty list of JSONL files or shard directories, "
                        f"got {shown(inputs)}")
        inputs = []
    resolved = [resolve_path(i, path.parent) for i in inputs]
    for given, full in zip(inputs, resolved):
        if not (Path(full).is_file() or (Path(full) / "index.json").is_file()):
            problems.append(f"inputs: {given}: neither a file nor a shard directory "
                            f"(looked at {full})")
    chunk = raw.get("chunk_size", 256)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        problems.append(f"chunk_size={shown(chunk)} must be an integer >= 1")
    stages_raw = raw.get("stages") or []
    if not isinstance(stages_raw, list):
        problems.append(f"stages: must be a list, got {shown(stages_raw)}")
        stages_raw = []
    stages = [_stage(i, s, path.parent, problems) for i, s in enumerate(stages_raw)]
    if problems:
        raise SpecError(f"{path}: " + f"\n{path}: ".join(problems))
    return CurationSpec(path=path, inputs=resolved, stages=[s for s in stages if s], chunk_size=chunk)
