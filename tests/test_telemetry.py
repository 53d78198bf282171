"""The run's Ray metrics on Ray's own Prometheus endpoint, and the Grafana panel that reads them.

A real run (one good video, one cut short so that some units fail, one unreadable file)
on a local Ray with a known metrics export port; the endpoint is then scraped like
Prometheus would, until every commit the manifest holds is counted there.
"""

from __future__ import annotations

import collections
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, own_ray
from raywarp.pipeline import telemetry
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.run import local_system_config, run
from test_pipeline import small_config, write_video

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ray_"  # Ray's, before every application metric it exports


@pytest.fixture(scope="module")
def metrics_port():
    """A local Ray exporting metrics on a free port, reported every second (not every 10 s).
    The metrics agent runs without the dashboard."""
    port = free_port()
    own_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=port,
             _system_config={**local_system_config(small_config("default")), "metrics_report_interval_ms": 1000})
    yield port
    ray.shutdown()


def scrape(port: int) -> list:
    """Every sample on the endpoint: (name, labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def totals(samples: list, name: str, *labels: str) -> dict[tuple, float]:
    """Sum of `name` over Ray's per-process series, by `labels`."""
    out = collections.Counter()
    for s in samples:
        if s.name == PREFIX + name:
            out[tuple(s.labels[k] for k in labels)] += s.value
    return dict(out)


def test_every_commit_is_counted_on_the_prometheus_endpoint(metrics_port, tiny_model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_video(src / "good.mp4", "coffee", 9, (16, 16), shift=(1.0, 0.0))
    whole = write_video(src / "cut.mp4", "chelsea", 17, (16, 16), shift=(0.0, 1.0)).read_bytes()
    (src / "cut.mp4").write_bytes(whole[: int(0.7 * len(whole))])  # probes; its later spans do not decode
    (src / "broken.mp4").write_bytes(b"\x00" * 5000)
    summary = run(str(src), str(tmp_path / "out"), small_config(tiny_model))
    assert len(summary.videos_done) == 1 and len(summary.videos_failed) == 2

    rows = Manifest(str(tmp_path / "out")).progress().to_pylist()  # one commit each: a fresh run
    units = collections.Counter((r["kind"], r["status"]) for r in rows)
    # The driver's own rows are among them: the cut video's units that did not decode, and both failed videos.
    assert units[("seam", "failed")] + units[("clip", "failed")] > 0 and units[("video", "failed")] == 2
    done = [r for r in rows if r["status"] == "done"]
    want = {
        ("units_total", "kind", "status"): {key: float(n) for key, n in units.items()},
        ("frames_restored_total", "kind"): {
            (kind,): float(sum(r["frames"] for r in done if r["kind"] == kind)) for kind in ("seam", "clip")},
        ("stage_seconds_count", "stage", "kind"): {
            (stage, kind): float(sum(r["kind"] == kind for r in done))
            for kind in ("seam", "clip") for stage in telemetry.STAGES} | {("write", "video"): 1.0},
    }
    # Every process reports once a second; the last ones may take a few reports to arrive.
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(metrics_port)
        got = {key: totals(samples, "raywarp_" + key[0], *key[1:]) for key in want}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert got == want
    buckets = totals(samples, "raywarp_stage_seconds_bucket", "stage", "kind", "le")
    counts = want[("stage_seconds_count", "stage", "kind")]
    assert {(stage, kind): buckets[(stage, kind, "+Inf")] for stage, kind in counts} == counts


# -- the Grafana panel --------------------------------------------------------------


def exposed_names() -> dict[str, tuple[set[str], set[str]]]:
    """Per metric telemetry defines: (the sample names Ray exports it under, its tags)."""
    out = {}
    for metric in telemetry.metrics():
        info = metric.info
        suffixes = ("_bucket", "_count", "_sum") if "boundaries" in info else ("_total",)
        out[info["name"]] = ({PREFIX + info["name"] + s for s in suffixes}, set(info["tag_keys"]))
    return out


def test_the_grafana_panel_reads_exactly_the_metrics_telemetry_defines():
    dashboard = json.loads((ROOT / "cluster" / "grafana" / "raywarp.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    used = {name for e in exprs for name in re.findall(r"\bray_raywarp_\w+", e)}
    exposed = exposed_names()
    exported = set().union(*(names for names, _ in exposed.values()))
    assert used <= exported, "the panel names a series Ray does not export"
    assert {m for m, (names, _) in exposed.items() if names & used} == set(exposed), "a metric has no panel"
    tags = set().union(*(keys for _, keys in exposed.values())) | {"le"}
    for e in exprs:
        for group in re.findall(r"\bby\s*\(([^)]*)\)", e):
            assert {g.strip() for g in group.split(",")} <= tags, e
