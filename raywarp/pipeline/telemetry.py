"""The run's Ray metrics: frames restored, units committed, seconds per stage.

`record(row)` counts one progress row (a `ProgressRow`), called right after the row is committed, in the
process that commits it: a worker actor (a unit's row), an encode task (a video's), the
driver (the failed rows it writes itself). So the metrics count what the manifest holds,
commit for commit, and every node's Ray metrics agent serves them on its Prometheus
endpoint, named with Ray's prefix:

    ray_raywarp_frames_restored_total{kind}        frames of units done (kind: seam | clip)
    ray_raywarp_units_total{kind, status}          rows committed (kind: seam | clip | video,
                                                   status: done | failed)
    ray_raywarp_stage_seconds_bucket{stage, kind}  seconds of each stage of a done row
                                                   (stage: decode | flow | sample | write;
                                                   a video's write is its encode)

Tags take a handful of values each: a video id or URI as a tag would make a series per
video, which Prometheus is not built to hold. cluster/README.md shows how to scrape them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from ray.util.metrics import Counter, Histogram

from raywarp.pipeline.records import ProgressRow

STAGES = ("decode", "flow", "sample", "write")  # a progress row's seconds_<stage> fields
# From a tiny unit's tens of milliseconds to a film's encode. Ray exports the _sum from
# these buckets' midpoints, not the observed values: quantiles are the measure to read.
SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500]


class Metrics(NamedTuple):
    frames_restored: Counter
    units: Counter
    stage_seconds: Histogram


@functools.cache
def metrics() -> Metrics:
    """This process's metric objects, made once, on first use: importing the pipeline
    registers nothing with Ray."""
    return Metrics(
        Counter("raywarp_frames_restored", "Frames of the seams and clips committed as done", tag_keys=("kind",)),
        Counter("raywarp_units", "Progress rows committed: seams, clips and videos, done or failed",
                tag_keys=("kind", "status")),
        Histogram("raywarp_stage_seconds", "Seconds of each stage of a seam, clip or video committed as done",
                  boundaries=SECONDS_BUCKETS, tag_keys=("stage", "kind")),
    )


def record(row: ProgressRow) -> None:
    """Count a committed progress row: the row, a done unit's frames, a done row's stage
    seconds (a failed row's are those of a partial attempt, which would blur them)."""
    m = metrics()
    m.units.inc(tags={"kind": row.kind, "status": row.status})
    if row.status != "done":
        return
    if row.kind != "video" and row.frames:
        m.frames_restored.inc(row.frames, tags={"kind": row.kind})
    for stage in STAGES:
        seconds = getattr(row, f"seconds_{stage}")
        if seconds is not None:
            m.stage_seconds.observe(float(seconds), tags={"stage": stage, "kind": row.kind})
