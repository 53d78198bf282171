"""`raywarp report`: the page of a real small run, opened in headless Chromium.

What a reader sees is checked in the browser: the DOM Chromium built (a section per
video, the failures with their reasons, every image a PNG), and its screenshot, where
every inline image must be found pixel for pixel (shown at its natural size).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import s3fs

from raywarp.cli import main as cli_main
from raywarp.pipeline.run import run
from raywarp.report import RUNS, SPAN, sampled_spans, write_report
from test_pipeline import small_config, write_video

WINDOW = (1200, 5000)  # the whole page of this run fits: every image is in the screenshot


pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> Path:
    """A video long enough for seams, one cut short (its later units fail), one not a video."""
    src = tmp_path_factory.mktemp("archive")
    write_video(src / "long.mp4", "coffee", 17, (16, 16), shift=(1.0, 0.0))
    whole = write_video(src / "cut.mp4", "chelsea", 17, (16, 16), shift=(0.0, 1.0)).read_bytes()
    (src / "cut.mp4").write_bytes(whole[: int(0.9 * len(whole))])
    (src / "broken.mp4").write_bytes(b"\x00not a video" * 300)
    dst = tmp_path_factory.mktemp("restored")
    run(str(src), str(dst), small_config(tiny_model))
    return dst


@pytest.fixture(scope="module")
def page(finished_run, tmp_path_factory) -> dict:
    """The report as Chromium shows it: {'path', 'dom', 'screenshot'}."""
    path = Path(write_report(str(finished_run)))
    shot = tmp_path_factory.mktemp("shot") / "report.png"
    chromium(path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    screenshot = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert screenshot is not None and screenshot.shape[:2] == WINDOW[::-1], f"no screenshot of {WINDOW} at {shot}"
    return {"path": path, "dom": Page(chromium(path, "--dump-dom")), "screenshot": screenshot}


def chromium(page: Path, *args: str) -> str:
    """Run headless Chromium on `page` with `args`; its stdout."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install -y chromium, Debian)")
    with tempfile.TemporaryDirectory() as profile:
        command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", "--hide-scrollbars", "--force-device-scale-factor=1", *args, page.as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


class Page(HTMLParser):
    """What the test reads off a DOM: video section names, failure rows, images."""

    def __init__(self, dom: str):
        super().__init__()
        self.sections, self.failures, self.images = [], [], []
        self._in, self._cells = None, None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "video" in attrs.get("class", ""):
            self._in = "section"
        elif tag == "h2" and self._in == "section":
            self._in, self._text = "h2", ""
        elif tag == "tr" and attrs.get("class") == "failure":
            self._cells = []
        elif tag == "td" and self._cells is not None:
            self._cells.append("")
        elif tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        if self._in == "h2":
            self._text += data
        if self._cells:
            self._cells[-1] += data

    def handle_endtag(self, tag):
        if tag == "h2" and self._in == "h2":
            self.sections.append(self._text.split()[0])
            self._in = None
        elif tag == "tr" and self._cells is not None:
            self.failures.append(self._cells)
            self._cells = None


def test_every_video_has_a_section(page):
    assert page["dom"].sections == ["broken.mp4", "cut.mp4", "long.mp4"]


def test_failures_are_listed_with_their_reasons(page):
    rows = {(video, what): reason for video, what, _, reason in page["dom"].failures}
    assert "not a video" in rows["broken.mp4", "video"]
    assert "units failed" in rows["cut.mp4", "video"]
    units = [(what, reason) for (video, what), reason in rows.items() if video == "cut.mp4" and what != "video"]
    assert units and any(reason.startswith("decode:") for _, reason in units), units
    assert all(what.startswith(("clip frames", "seam frames")) for what, _ in units), units


def test_every_image_is_an_inline_png_shown_at_its_natural_size(page):
    images = page["dom"].images
    assert len(images) >= 4, "expected the stage chart and long.mp4's frames, slices and consistency plot"
    for attrs in images:
        head = "data:image/png;base64,"
        assert attrs["src"].startswith(head), attrs["src"][:60]
        png = decode_png(attrs["src"])
        assert png.shape[:2] == (int(attrs["height"]), int(attrs["width"])), attrs["alt"]


def test_the_browser_renders_every_image(page):
    """Each inline image is found in the screenshot at 1:1, nearly exactly."""
    for attrs in page["dom"].images:
        png = decode_png(attrs["src"])
        scores = cv2.matchTemplate(page["screenshot"], png, cv2.TM_CCOEFF_NORMED)
        assert scores.max() > 0.98, f"{attrs['alt']}: best match {scores.max():.3f} in the screenshot"


def test_the_consistency_plot_marks_the_seams(page):
    """long.mp4 has seams (17 frames in clips of 7): its plot draws them in their colour."""
    plot = next(a for a in page["dom"].images if a["alt"] == "long.mp4: warping error per frame")
    seam = np.array([0x00, 0x8A, 0xE0])  # the seam lines' colour, BGR
    assert (np.abs(decode_png(plot["src"]).astype(int) - seam).max(-1) < 30).sum() > 100


def test_the_cli_writes_where_asked_and_refuses_a_folder_without_a_run(finished_run, tmp_path, capsys):
    out = tmp_path / "page" / "report.html"
    assert cli_main(["report", str(finished_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and "<section" in out.read_text()
    assert cli_main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no raywarp run under" in capsys.readouterr().err


def test_a_run_on_s3_is_reported_there(finished_run, s3_bucket):
    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(finished_run / "_raywarp"), f"{bucket}/run/_raywarp", recursive=True)
    written = write_report(f"s3://{bucket}/run", storage_options=options)
    assert written == f"s3://{bucket}/run/_raywarp/report.html"
    assert "long.mp4" in fs.cat_file(written).decode()


@pytest.mark.parametrize("frames", [1, 2, 17, 24, 25, 240, 241, 172_800])
def test_a_film_is_read_in_bounded_spans(frames):
    """Short videos are read whole, each pair of frames once; long films as RUNS runs of SPAN."""
    spans = sampled_spans(frames)
    assert all(0 <= a < b <= frames and b - a <= SPAN for a, b in spans)
    read = sorted({t for a, b in spans for t in range(a, b)})
    if frames <= RUNS * SPAN:
        assert read == list(range(frames))
        assert all(b0 - 1 == a1 for (_, b0), (a1, _) in zip(spans, spans[1:]))  # consecutive spans share one frame
    else:
        assert len(spans) == RUNS and len(read) == RUNS * SPAN and spans[0][0] == 0 and spans[-1][1] == frames


def decode_png(src: str) -> np.ndarray:
    png = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert png is not None, "an <img> that is not a decodable PNG"
    return png
