"""The typed records that cross the pipeline's stage boundaries.

    Video        a probed source video (a row of videos.parquet)
    Unit         one unit of work, a seam or a clip (a row of clips.parquet)
    ProgressRow  one commit of the progress log: a unit's or a video's attempt
    Decoded, Flowed    what the decode and flow stages report of a unit
    Redo, Unusable     a payload to recompute; a video that cannot be used

Records are frozen dataclasses. A row record's Arrow schema is derived from its fields
(`schema()`), and `to_row` / `from_row` are its only conversions to and from the dicts
of Parquet tables: dicts live at the Parquet and Ray edges only. Each progress row is
built here, by `unit_row` or `video_row`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
import time
import types
import typing
from dataclasses import dataclass, field

import pyarrow as pa

KINDS = ("seam", "clip", "video")
STATUSES = ("done", "failed")
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(), dict: pa.string()}


_INT32 = {"arrow": pa.int32()}  # field metadata: stored as int32, not int64


class Record:
    """A frozen dataclass that is also a table row. `dict` fields are stored as JSON."""

    @classmethod
    @functools.cache
    def schema(cls) -> pa.Schema:
        hints = typing.get_type_hints(cls)
        fields = []
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if isinstance(kind, types.UnionType):  # X | None
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            fields.append(pa.field(f.name, f.metadata.get("arrow", _ARROW[typing.get_origin(kind) or kind])))
        return pa.schema(fields)

    def to_row(self) -> dict:
        return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
                for k, v in ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))}

    @classmethod
    @functools.cache
    def _fields(cls) -> tuple[tuple[str, bool], ...]:
        """(name, stored as JSON) of each field; made once per class (a resume reads 10⁶ rows)."""
        hints = typing.get_type_hints(cls)
        return tuple((f.name, dict in (hints[f.name], *typing.get_args(hints[f.name]))) for f in dataclasses.fields(cls))

    @classmethod
    def from_row(cls, row: dict):
        """The record of a table row; columns it does not know are ignored (a newer or an
        older table), JSON columns are parsed back."""
        values = {}
        for name, is_json in cls._fields():
            if name in row:
                value = row[name]
                values[name] = json.loads(value or "{}") if is_json and isinstance(value, str) else value
        return cls(**values)


@dataclass(frozen=True)
class Video(Record):
    """A source video as probed; `video_id`, `output` and `shots` (how many) are set by the
    driver once it knows them."""

    uri: str
    size_bytes: int
    fingerprint: str  # content version: size and mtime (local) or ETag (S3)
    width: int  # as displayed: rotation applied
    height: int
    fps_num: int
    fps_den: int
    fps: float
    frames: int
    duration_s: float
    codec: str
    pix_fmt: str
    rotation: int  # degrees counterclockwise that show a decoded frame upright
    has_audio: bool
    not_copied: str  # the streams the output drops
    video_id: str = ""
    output: str = ""
    shots: int = 0


@dataclass(frozen=True)
class Unit(Record):
    """One unit of work: a seam or a clip of one shot (`raywarp.pipeline.plan`). It samples
    frames [start, stop) of its video and owns output frames [out_start, out_stop); a
    clip's `start_anchor` / `end_anchor` name the seams whose edge frames it borrows
    ('' for none)."""

    id: str
    video_id: str
    uri: str
    kind: str  # 'seam' | 'clip'
    phase: int  # 1: seams, 2: clips
    start: int
    stop: int
    out_start: int
    out_stop: int
    start_anchor: str
    end_anchor: str
    shot: int
    shot_start: int
    shot_stop: int
    seed: int  # the shot's noise seed
    video_frames: int
    rotation: int
    frames: int  # the output frames it owns: out_stop − out_start

    @property
    def shot_index(self) -> int:
        """Its first frame's place in its shot (where its noise coordinates start)."""
        return self.start - self.shot_start

    @property
    def chain_key(self) -> tuple[str, int]:
        """Units with one noise-coordinate chain: those of a shot."""
        return self.video_id, self.shot

    def describe(self) -> str:
        return f"{self.kind} {self.start}-{self.stop} of {self.uri}"


@dataclass(frozen=True)
class ProgressRow(Record):
    """One commit of the progress log (`raywarp.pipeline.manifest`): an attempt of a seam,
    a clip (`id` the unit's) or a video (`id` the video's)."""

    id: str
    kind: str  # 'seam' | 'clip' | 'video'
    status: str  # 'done' | 'failed'
    attempt: int = field(metadata=_INT32)  # the run attempt, from Manifest.start_run
    finished_at: float  # unix seconds
    video_id: str | None = None
    uri: str | None = None  # the source video
    node: str | None = None
    frames: int | None = field(default=None, metadata=_INT32)
    started_at: float | None = None
    seconds_decode: float | None = None
    seconds_flow: float | None = None
    seconds_sample: float | None = None
    seconds_write: float | None = None
    metrics: dict | None = None
    error: str | None = None
    output: str | None = None  # URI of the payload or the output video
    checksums: dict | None = None  # {payload key or output URI: sha256 of its bytes}: what the row commits
    output_bytes: int | None = None  # a video row: the size of its output file

    def __post_init__(self):
        if self.kind not in KINDS or self.status not in STATUSES:
            raise ValueError(f"progress row {self.id!r}: kind must be one of {KINDS}, status one of {STATUSES}")

    def checksum(self, key: str) -> str | None:
        """The sha256 this row recorded for payload `key` (None for rows that predate checksums)."""
        return (self.checksums or {}).get(key)


def _attempt(id: str, kind: str, video_id: str, uri: str, attempt: int, status: str, started_at: float | None,
             outcome: dict) -> ProgressRow:
    now = time.time()
    return ProgressRow(id=id, kind=kind, status=status, attempt=attempt, video_id=video_id, uri=uri,
                       node=socket.gethostname(), started_at=now if started_at is None else started_at,
                       finished_at=now, **({"frames": 0} if status == "failed" else {}), **outcome)


def unit_row(unit: Unit, attempt: int, status: str, started_at: float | None = None, **outcome) -> ProgressRow:
    """The progress row of an attempt of `unit`, finished now; `outcome` fills in the rest.
    A failed row restores no frames."""
    return _attempt(unit.id, unit.kind, unit.video_id, unit.uri, attempt, status, started_at, outcome)


def video_row(video_id: str, uri: str, attempt: int, status: str, started_at: float | None = None,
              **outcome) -> ProgressRow:
    """The progress row of an attempt of a video (its encode, or why it failed), finished now."""
    return _attempt(video_id, "video", video_id, uri, attempt, status, started_at, outcome)


@dataclass(frozen=True)
class Decoded:
    """What a unit's decode reports ('' error: its frames are good)."""

    started_at: float
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class Flowed:
    """What a unit's flows report. fallback_pairs: the video frames t whose pair (t, t+1)
    has no flow (`raywarp.flow.linked`), restored uncoupled."""

    seconds: float
    end_map_checksum: str | None = None
    fallback_pairs: tuple[int, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Redo:
    """An encode stopped at a unit's payload, gone or damaged: recompute that unit."""

    unit_id: str
    error: str


@dataclass(frozen=True)
class Unusable:
    """A video that cannot be used (unreadable, not a video, a shot scan that failed)."""

    uri: str
    error: str
