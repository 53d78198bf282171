"""The driver's progress display: plain lines when not a terminal, one live line in one."""

from __future__ import annotations

import io

from raywarp.pipeline.progress import Progress


def test_plain_lines_count_what_is_done_and_failed():
    out = io.StringIO()
    progress = Progress(videos=3, units=6, frames=60, done_videos=1, done_units=2, done_frames=20, failed_videos=1,
                        stream=out, interval=3600)
    progress.show(force=True)
    progress.unit_done(10)
    progress.unit_failed()
    progress.message("done a.mp4 -> out/a.mp4")
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[1] == "done a.mp4 -> out/a.mp4"  # messages go out at once, progress lines only every interval
    assert lines[0].startswith("progress: videos 1/3, units 2/6, frames 20/60; 0.00 frames/s; ETA unknown")
    last = lines[-1]
    assert last.startswith("progress: videos 1/3, units 3/6, frames 30/60; ")
    assert last.endswith("failed: 1 units, 1 videos") and "ETA unknown" not in last  # a rate, so an ETA
    assert len(lines) == 3


def test_a_terminal_gets_one_live_line_with_messages_above_it():
    out = io.StringIO()
    progress = Progress(videos=1, units=2, frames=10, stream=out, live=True)
    progress.unit_done(5)
    progress.message("something to say")
    progress.close()
    text = out.getvalue()
    assert "\r" in text and "something to say\n" in text  # redrawn in place; the message on its own line
    assert "units 1/2, frames 5/10" in text.replace("\r", "\n").strip().splitlines()[-1]


def test_quiet_counts_but_prints_nothing():
    out = io.StringIO()
    progress = Progress(videos=1, units=1, frames=4, stream=out, quiet=True)
    progress.unit_done(4)
    progress.message("x")
    progress.close()
    assert out.getvalue() == "" and progress.done["frames"] == 4
