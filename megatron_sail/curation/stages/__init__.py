"""The curation stages by spec name."""

from __future__ import annotations

from pathlib import Path

from megatron_sail.curation.spec import StageSpec
from megatron_sail.curation.stages.base import GlobalStage, MapStage
from megatron_sail.curation.stages.caption_to_qa import CaptionToQa
from megatron_sail.curation.stages.dedup import Dedup
from megatron_sail.curation.stages.judge import Judge
from megatron_sail.curation.stages.media_checks import Decodable, Resolution
from megatron_sail.curation.stages.rebalance import Rebalance
from megatron_sail.curation.stages.text_filters import CaptionLength, NgramRepetition

STAGES = {"decodable": Decodable, "resolution": Resolution, "caption_length": CaptionLength,
          "ngram_repetition": NgramRepetition, "dedup": Dedup, "judge": Judge,
          "rebalance": Rebalance, "caption_to_qa": CaptionToQa}


def make_stage(spec: StageSpec, spec_dir: Path) -> MapStage:
    return STAGES[spec.name](spec.name, spec.options, spec_dir)


__all__ = ["GlobalStage", "MapStage", "STAGES", "make_stage"]
