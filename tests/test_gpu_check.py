"""The prepared GPU check's dry run: both parts at tiny sizes on the CPU, every row measured."""

import json
import math

import pytest

from raywarp.bench import gpu, gpu_check


@pytest.fixture(scope="module")
def checked(tmp_path_factory, local_ray):
    out = tmp_path_factory.mktemp("gpu_check")
    reports = gpu_check.main(["--out", str(out), "--tiny", "--device", "cpu", "--commit", "test"])
    return out, reports


def test_models_part_times_every_model_precision_and_mode(checked):
    out, reports = checked
    rows = reports["models"].sections["bench.gpu: seconds per frame"]
    configs = {(r["model"], r["precision"], r["weights"], r["compile"], r["mode"]) for r in rows}
    for model in gpu.MODELS:
        for precision in ("fp32", "bf16"):  # --precision bf16 runs bf16 weights
            for mode in ("independent", "warped", "white-warped"):
                assert (model, precision, precision, False, mode) in configs
    assert ("sd-x4-upscaler", "bf16", "bf16", True, "warped") in configs
    assert all(r["s/frame"] > 0 and 0 < r["denoiser share"] <= 1 for r in rows)
    compiled = next(r for r in rows if r["compile"])
    assert compiled["graphs compiled for a new clip length"] >= 0
    syncs = reports["models"].sections["host syncs per step (profiler)"]
    assert [r["what"] for r in syncs] == ["sync calls", "device-to-host copies"]
    assert all(math.isfinite(r["per step"]) for r in syncs)
    flows = reports["models"].sections["flows at 64×48: ms per frame"]
    assert len(flows) == 4 and all(r["ms/frame"] > 0 and 0 < r["unknown flow"] < 0.5 for r in flows)
    tiled = reports["models"].sections["bench.gpu --tiled: production sizes in tiles"]
    assert [r["workload"].split(" (")[0] for r in tiled] == list(gpu.TILED)
    assert all(r["s/frame"] > 0 and 0 < r["denoiser share"] <= 1 for r in tiled)
    saved = json.loads((out / "gpu_check_models.json").read_text())
    assert saved["commit"] == "test" and saved["tiny"] and saved["sections"] == json.loads(
        json.dumps(reports["models"].sections, default=str))
    assert "| model | size | precision | weights | compile | mode | s/frame |" in (out / "gpu_check_models.md").read_text()


def test_pipeline_part_runs_raywarp_end_to_end(checked):
    out, reports = checked
    (standalone,) = reports["pipeline"].sections["standalone sampler (same model, size, settings)"]
    (run,) = reports["pipeline"].sections["raywarp run (embedded Ray)"]
    assert standalone["s/frame"] > 0 and standalone["frames"] == gpu_check.TINY.clip_len
    assert run["exit code"] == 0 and run["units"] == run["units done"] >= 3
    assert run["outputs ok"] and run["output frames"] == gpu_check.TINY.pipeline_frames
    h, w = gpu_check.TINY.pipeline_lr
    assert run["output size"] == f"{4 * w}×{4 * h}"
    assert run["frames/s"] > 0 and run["pipeline / standalone frames/s"] > 0 and run["max measurement error"] < 0.01
    assert math.isnan(run["GPU busy"])  # no GPU here: said, not invented
    units = reports["pipeline"].sections["raywarp run: units"]
    assert len(units) == run["units"] and all(u["finished s"] >= u["started s"] >= 0 for u in units)
    ops = reports["pipeline"].sections["standalone sampler: top operators (2 steps)"]
    assert len(ops) == 12 and all(o["ms"] >= 0 and o["calls"] >= 1 for o in ops)
    assert "## raywarp run (embedded Ray)" in (out / "gpu_check_pipeline.md").read_text()


def test_budget_skips_rows_instead_of_running_them(tmp_path):
    report = gpu_check.Report(tmp_path, "models", {})
    assert not gpu_check.Budget(0).allows(report, "s", {"what": "x"})
    assert report.sections["s"] == [{"what": "x", "skipped": "time budget spent"}]
