"""Decode only a span of a video: seek to the keyframe before it, decode forward."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np

from raywarp.pipeline.source import VideoError, filesystem


def _indexed_frames(container, stream, rate: Fraction):
    """Yield (frame index, frame) decoding forward from the container's current position.

    Index i is the frame shown at i / rate after the stream's start time.
    """
    start_time = stream.start_time or 0
    for frame in container.decode(stream):
        yield round((frame.pts - start_time) * stream.time_base * rate), frame


def _rewind(container, stream):
    """Seek to the stream's first keyframe."""
    try:
        # Earlier than any packet. Seeking to the start time itself can overshoot where
        # a demuxer's seek is approximate (mpegts bisects the file).
        container.seek(-(2**62), stream=stream, backward=True)
    except av.error.PermissionError:  # avi: no index entry before the first packet
        container.seek(stream.start_time or 0, stream=stream, backward=True)


def _seek(container, stream, rate: Fraction, index: int):
    """Seek to the last keyframe at or before frame `index`."""
    if index == 0:
        return _rewind(container, stream)
    # Half a frame early, so a timestamp rounded up still lands at or before the frame.
    ts = (stream.start_time or 0) + math.floor((index - Fraction(1, 2)) / rate / stream.time_base)
    container.seek(ts, stream=stream, backward=True)


def _frames_from(container, stream, rate: Fraction, start: int):
    """Yield (index, frame) from a keyframe at or before frame `start` onwards.

    A container index can place a keyframe after `start` (its decode timestamp is
    earlier than its display timestamp), and an open GOP's leading frames cannot be
    decoded after a seek: whenever the first frame out is past `start`, seek further back.
    """
    lead = 0
    while True:
        target = max(start - lead, 0)
        _seek(container, stream, rate, target)
        frames = _indexed_frames(container, stream, rate)
        first = next(frames, None)
        if (first is not None and first[0] <= start) or target == 0:
            break
        lead = 2 * lead + 1 + (first[0] - start if first is not None else 0)
    if first is not None:
        yield first
        yield from frames


def decode_span(uri: str, start: int, stop: int, storage_options: dict | None = None, fps=None) -> np.ndarray:
    """Frames [start, stop) of the video at `uri`, (stop - start, H, W, 3) uint8 RGB.

    Frame i is the i-th frame in display order from the start of the stream, found
    by its timestamp at `fps` (default: the stream's average rate). Seeks to the
    keyframe before `start` and decodes forward; only the span is kept in memory.
    Equal to the same slice of a full sequential decode. Raises VideoError when the
    video cannot deliver the span (e.g. truncated), ValueError for an empty or negative span.
    """
    if start < 0 or stop <= start:
        raise ValueError(f"span: need 0 <= start < stop, got [{start}, {stop})")
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f:
        try:
            return _decode_span(f, uri, start, stop, fps)
        except av.FFmpegError as err:
            raise VideoError(uri, f"truncated or corrupt data in frames [{start}, {stop}) ({err})") from err


def _decode_span(f, uri: str, start: int, stop: int, fps) -> np.ndarray:
    """`decode_span` on an open file object `f`."""
    with av.open(f, "r") as container:
        if not container.streams.video:
            raise VideoError(uri, "not a video (no video stream)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: output is identical, just faster
        rate = Fraction(fps) if fps else (stream.average_rate or stream.guessed_rate)
        out, got = None, 0
        for index, frame in _frames_from(container, stream, rate, start):
            if index < start + got:  # before the span
                continue
            if index >= stop:
                break
            if index > start + got:
                raise VideoError(uri, f"frame {start + got} missing, the next decoded is frame {index} "
                                      "(corrupt data or variable frame rate)")
            if out is None:
                out = np.empty((stop - start, frame.height, frame.width, 3), np.uint8)
            out[got] = frame.to_ndarray(format="rgb24")
            got += 1
        if got < stop - start:
            raise VideoError(uri, f"truncated: got {got} of {stop - start} frames from frame {start}")
        return out
