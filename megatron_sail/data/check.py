"""Validate conversation data the way training will read it, and write shards of the samples
that pass.

Every record is parsed, every image fully decoded (a truncated JPEG passes a header probe but
not a decode), every video decoded at the configured frame count, and, with a tokenizer, the
sample's length compared with ``seq_length``. Problems are reported per sample as
``file:line: kind: reason``; kinds are ``SampleErrorKind`` values. Work is spread over worker
processes in chunks, results come back in input order.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, deque
from contextlib import closing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from megatron_sail.data.records.blend import BlendError, is_blend_file, load_blend
from megatron_sail.data.media.errors import MediaError
from megatron_sail.data.media.images import decode_image
from megatron_sail.data.records.record import Record, RecordError, iter_lines, media_base, parse_line
from megatron_sail.data.encoding.sample_encoder import (
    FileMedia,
    MediaReader,
    SampleEncoder,
    SampleError,
    SampleErrorKind,
)
from megatron_sail.data.records.shards import DEFAULT_SHARD_SIZE, INDEX_FILE, ShardIndex, ShardReader, ShardSample, ShardWriter
from megatron_sail.utils.progress import ProgressLine

CHUNK = 16  # records per worker task: amortises inter-process overhead on text-only data


@dataclass(frozen=True)
class Settings:
    """Sample settings the checks (and the lengths stored in an index) are made at."""

    image_size: int = 448
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    num_frames: int = 16
    tokenizer: str | None = None
    seq_length: int | None = None
    video_backend: str = "auto"


@dataclass(frozen=True)
class Problem:
    where: str  # the record: file:line, or shard:member (from file:line)
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.reason}"


@dataclass
class Inspection:
    where: str
    problems: list[Problem]
    sample: ShardSample | None  # set when the sample is usable


@dataclass
class Report:
    samples: int = 0
    ok: int = 0
    problems: list[Problem] = field(default_factory=list)

    def add(self, inspection: Inspection) -> None:
        self.samples += 1
        self.ok += not inspection.problems
        self.problems += inspection.problems

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(p.kind for p in self.problems).items()))

    def summary(self) -> str:
        bad = self.samples - self.ok
        lines = [f"{self.samples} samples: {self.ok} ok, {bad} with problems"]
        lines += [f"  {kind}: {n}" for kind, n in self.by_kind().items()]
        return "\n".join(lines)


@functools.lru_cache(maxsize=4)
def _encoder(settings: Settings) -> SampleEncoder | None:
    """One encoder per process and settings (loading a tokenizer takes about a second)."""
    if settings.tokenizer is None:
        return None
    from megatron_sail.data.encoding.hf_tokenizer import load_tokenizer

    return SampleEncoder(load_tokenizer(settings.tokenizer), image_size=settings.image_size,
                         max_tiles=settings.max_tiles, num_frames=settings.num_frames,
                         min_tiles=settings.min_tiles, use_thumbnail=settings.use_thumbnail,
                         seq_length=settings.seq_length, video_backend=settings.video_backend)


def _problem(where: str, exc: SampleError | MediaError, kind: SampleErrorKind) -> Problem:
    if isinstance(exc, SampleError):
        kind = exc.kind
    reason = exc.reason if exc.source == where else f"{exc.source}: {exc.reason}"
    return Problem(where, kind.value, reason)


def inspect_record(record: Record, media: MediaReader, settings: Settings, keep_media: bool = False) -> Inspection:
    """Decode every medium of ``record`` and check its length; collect all problems."""
    where = record.where
    problems: list[Problem] = []
    data: dict[str, bytes] = {}
    sizes: list[tuple[int, int]] = []
    for ref in record.images:
        try:
            raw = media.read(ref)
            sizes.append(decode_image(raw, media.name(ref)).size)
            data[ref] = raw
        except (SampleError, MediaError) as exc:
            problems.append(_problem(where, exc, SampleErrorKind.MEDIA_CORRUPT))
    frames = None
    if record.video is not None:
        from megatron_sail.data.media.video import decode_video

        try:
            raw = media.read(record.video)
            frames = int(decode_video(raw, media.name(record.video), settings.num_frames,
                                      settings.video_backend).shape[0])
            data[record.video] = raw
        except (SampleError, MediaError) as exc:
            problems.append(_problem(where, exc, SampleErrorKind.VIDEO_UNDECODABLE))
    if problems:
        return Inspection(where, problems, None)
    length = visual = None
    encoder = _encoder(settings)
    if encoder is not None:
        try:
            plan = encoder.plan_from_sizes(record, sizes, frames)
        except SampleError as exc:
            return Inspection(where, [_problem(where, exc, exc.kind)], None)
        length, visual = plan.length, plan.visual_tokens
    sample = ShardSample(record, data if keep_media else {}, where, sizes, frames, length, visual)
    return Inspection(where, [], sample)


# -- jobs: small picklable descriptions of one record, run in worker processes ----------------
@dataclass(frozen=True)
class _LineJob:
    path: str
    line: int
    raw: bytes
    base_dir: str


@dataclass(frozen=True)
class _ShardJob:
    directory: str
    index: int
    stamp: int  # index.json's mtime: a rewritten index gets a fresh reader


@functools.lru_cache(maxsize=8)
def _reader(directory: str, stamp: int) -> ShardReader:
    return ShardReader(directory)


def _run_job(job: _LineJob | _ShardJob, settings: Settings, keep_media: bool) -> Inspection:
    if isinstance(job, _LineJob):
        try:
            record = parse_line(job.raw, job.path, job.line, job.base_dir)
        except RecordError as exc:
            where = f"{job.path}:{job.line}"
            return Inspection(where, [Problem(where, SampleErrorKind.MALFORMED_RECORD.value, exc.reason)], None)
        return inspect_record(record, FileMedia(), settings, keep_media)
    reader = _reader(job.directory, job.stamp)
    where = f"{os.path.join(job.directory, INDEX_FILE)}: sample {job.index}"
    try:
        shard_record = reader.read(job.index)
    except RecordError as exc:
        return Inspection(exc.source, [Problem(exc.source, SampleErrorKind.MALFORMED_RECORD.value, exc.reason)], None)
    except SampleError as exc:
        return Inspection(where, [Problem(exc.source, exc.kind.value, exc.reason)], None)
    except (ValueError, OSError) as exc:
        return Inspection(where, [Problem(where, SampleErrorKind.MALFORMED_RECORD.value, str(exc))], None)
    inspection = inspect_record(shard_record.record, shard_record.media, settings, keep_media)
    stored = [tuple(size) for size in reader.index.image_sizes[job.index]]
    if inspection.sample is not None and inspection.sample.image_sizes != stored:
        # Planning trusts the index; a stale one would mis-size packs.
        inspection.problems.append(Problem(inspection.where, SampleErrorKind.MALFORMED_RECORD.value,
                                           f"index.json lists image sizes {stored}, the images are "
                                           f"{inspection.sample.image_sizes}"))
        inspection.sample = None
    return inspection


def _run_chunk(jobs: list, settings: Settings, keep_media: bool) -> list[Inspection]:
    return [_run_job(job, settings, keep_media) for job in jobs]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _worker_signals() -> None:
    """Workers leave Ctrl-C (sent to the whole process group) and SIGTERM handling to the
    parent, which stops them; inherited Python handlers would print their own tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_jobs(jobs: Iterable, settings: Settings, workers: int = 1, keep_media: bool = False) -> Iterator[Inspection]:
    """Inspections in job order; ``workers > 1`` uses that many processes with a bounded
    number of chunks in flight (memory stays flat on any input size). However the caller
    stops - done, an error, Ctrl-C, closing the generator - the worker processes are
    terminated and joined before this returns."""
    if workers <= 1:
        for job in jobs:
            yield _run_job(job, settings, keep_media)
        return
    with multiprocessing.Pool(workers, initializer=_worker_signals) as pool:  # exit: terminate
        pending: deque = deque()
        for chunk in _chunks(jobs, CHUNK):
            pending.append(pool.apply_async(_run_chunk, (chunk, settings, keep_media)))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


# -- inputs -----------------------------------------------------------------------------------
def count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            n += block.count(b"\n")
    return n


def jsonl_jobs(path: str, root: str | None, on_error: Callable[[Problem], None]) -> Iterator[_LineJob]:
    base = media_base(path, root)
    try:
        for line, raw in iter_lines(path):
            yield _LineJob(path, line, raw, base)
    except RecordError as exc:  # the file itself cannot be opened
        on_error(Problem(path, SampleErrorKind.MALFORMED_RECORD.value, exc.reason))


@dataclass(frozen=True)
class Source:
    kind: str  # jsonl | shards
    path: str
    root: str | None = None


def expand_sources(paths: list[str], root: str | None = None,
                   _within: tuple[str, ...] = ()) -> list[Source]:
    """JSONL files, shard directories and blend files (expanded to their datasets; ``_within``:
    the blend files being expanded, outermost first, so that a cycle is named, not followed)."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, INDEX_FILE)):
                raise ValueError(f"{path}: a directory without {INDEX_FILE} (not a shard directory)")
            out.append(Source("shards", path))
        elif is_blend_file(path):
            seen = [os.path.realpath(p) for p in _within]
            if os.path.realpath(path) in seen:
                cycle = _within[seen.index(os.path.realpath(path)):] + (path,)
                raise BlendError(f"{_within[-1]}: blend files list each other in a cycle: "
                                 + " -> ".join(cycle))
            for entry in load_blend(path).entries:
                out += [Source(s.kind, s.path, entry.root)
                        for s in expand_sources([entry.path], None, _within + (path,))]
        elif os.path.isfile(path):
            out.append(Source("jsonl", path, root))
        else:
            raise ValueError(f"{path}: no such file or directory")
    return out


def _source_jobs(sources: list[Source], on_error: Callable[[Problem], None]) -> Iterator:
    for source in sources:
        if source.kind == "shards":
            stamp = os.stat(os.path.join(source.path, INDEX_FILE)).st_mtime_ns
            yield from (_ShardJob(source.path, i, stamp) for i in range(len(ShardIndex.load(source.path))))
        else:
            yield from jsonl_jobs(source.path, source.root, on_error)


def total_samples(sources: list[Source]) -> int:
    return sum(len(ShardIndex.load(s.path)) if s.kind == "shards" else count_lines(s.path) for s in sources)


# -- progress ---------------------------------------------------------------------------------
class Progress:
    """The progress line (``utils.progress``) on stderr every ``interval`` seconds."""

    def __init__(self, what: str, total: int, interval: float = 5.0, stream=None) -> None:
        self.interval = interval
        self._line = ProgressLine(what, total, "samples",
                                  stream=stream if stream is not None else sys.stderr)
        self.last = time.monotonic()
        self.printed = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last, self.printed = now, True
        self._line.show(done)


# -- the two commands' engines ------------------------------------------------------------------
def check(paths: list[str], settings: Settings, root: str | None = None, workers: int = 1,
          on_problem: Callable[[Problem], None] = lambda p: None, progress_interval: float = 5.0) -> Report:
    """Inspect every sample of ``paths``; problems go to ``on_problem`` as they are found."""
    sources = expand_sources(paths, root)
    _encoder(settings)  # a bad tokenizer fails here, once; forked workers inherit the loaded one
    report = Report()
    progress = Progress("check", total_samples(sources), progress_interval)

    def file_problem(problem: Problem) -> None:
        report.problems.append(problem)
        on_problem(problem)

    with closing(run_jobs(_source_jobs(sources, file_problem), settings, workers)) as inspections:
        for inspection in inspections:
            report.add(inspection)
            for problem in inspection.problems:
                on_problem(problem)
            progress.update(report.samples)
    return report


def prepare(jsonl_paths: list[str], out_dir: str, settings: Settings, shard_size: int = DEFAULT_SHARD_SIZE,
            root: str | None = None, workers: int = 1, on_problem: Callable[[Problem], None] = lambda p: None,
            progress_interval: float = 5.0) -> tuple[Report, ShardIndex]:
    """Write the usable samples of ``jsonl_paths`` to shards in ``out_dir``; skip the rest."""
    sources = [Source("jsonl", p, root) for p in jsonl_paths]
    for source in sources:
        if not os.path.isfile(source.path):
            raise ValueError(f"{source.path}: no such file")
    report = Report()
    progress = Progress("prepare", total_samples(sources), progress_interval)
    stored = {k: v for k, v in asdict(settings).items() if k != "video_backend"}
    encoder = _encoder(settings)
    if encoder is not None:  # stored lengths hold only for this tokenizer and these settings
        stored["tokenizer"] = os.path.abspath(settings.tokenizer)
        stored["tokens_per_tile"] = encoder.tokens_per_tile

    def file_problem(problem: Problem) -> None:
        report.problems.append(problem)
        on_problem(problem)

    with ShardWriter(out_dir, shard_size, settings=stored) as writer, \
            closing(run_jobs(_source_jobs(sources, file_problem), settings, workers,
                             keep_media=True)) as inspections:
        for inspection in inspections:
            report.add(inspection)
            for problem in inspection.problems:
                on_problem(problem)
            if inspection.sample is not None:
                writer.add(inspection.sample)
            progress.update(report.samples)
    return report, writer.index
