"""What a run shows while it goes: one progress display on the driver.

Videos, units and frames done out of the plan's, frames/s over the units computed in
this run, the ETA from that rate, and failures so far. In a terminal it is one live
line (tqdm); otherwise (a log file, a Ray job's output) a plain line every `interval`
seconds and a last one when the run ends. Messages (a video done or failed) print
above the live line instead of breaking it.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts of one run; `units` and `frames` are the plan's totals, `done_*` what
    earlier attempts committed. `quiet`: count, show nothing."""

    def __init__(self, videos: int, units: int, frames: int, done_videos: int = 0, done_units: int = 0,
                 done_frames: int = 0, failed_videos: int = 0, stream=None, live: bool | None = None,
                 interval: float = 30.0, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and (self.stream.isatty() if live is None else live)
        self.total = {"videos": videos, "units": units, "frames": frames}
        self.done = {"videos": done_videos, "units": done_units, "frames": done_frames}
        self.failed = {"videos": failed_videos, "units": 0}
        self.computed_frames = 0
        self.started = self.last_line = time.monotonic()
        self.interval = interval
        self.bar = (tqdm(total=frames, initial=done_frames, unit="frame", file=self.stream, dynamic_ncols=True,
                         bar_format="{percentage:3.0f}%|{bar:20}| {desc}")
                    if self.live else None)

    def rate(self) -> float | None:
        """Frames per second computed in this run (None before the first unit)."""
        elapsed = time.monotonic() - self.started
        return self.computed_frames / elapsed if self.computed_frames and elapsed > 0 else None

    def line(self) -> str:
        t, d = self.total, self.done
        rate = self.rate()
        left = t["frames"] - d["frames"]
        eta = format_seconds(left / rate) if rate else "unknown"
        failed = f"; failed: {self.failed['units']} units, {self.failed['videos']} videos" if any(self.failed.values()) else ""
        return (f"videos {d['videos']}/{t['videos']}, units {d['units']}/{t['units']}, frames {d['frames']}/{t['frames']}; "
                f"{rate or 0:.2f} frames/s; ETA {eta}{failed}")

    def show(self, force: bool = False) -> None:
        """Redraw the live line; print a plain one if `force` or `interval` has passed."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.n = self.done["frames"]
            self.bar.set_description_str(self.line(), refresh=True)
        elif force or time.monotonic() - self.last_line >= self.interval:
            print(f"progress: {self.line()}", file=self.stream, flush=True)
            self.last_line = time.monotonic()

    def unit_done(self, frames: int) -> None:
        self.done["units"] += 1
        self.done["frames"] += frames
        self.computed_frames += frames
        self.show()

    def unit_redone(self, frames: int) -> None:
        """A unit counted done must be computed again (its payload was lost)."""
        self.done["units"] -= 1
        self.done["frames"] -= frames
        self.show()

    def unit_failed(self) -> None:
        self.failed["units"] += 1
        self.show()

    def video_done(self) -> None:
        self.done["videos"] += 1
        self.show()

    def video_failed(self) -> None:
        self.failed["videos"] += 1
        self.show()

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.show()
            self.bar.close()
        else:
            self.show(force=True)
