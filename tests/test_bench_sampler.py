"""The sampler benchmark's summary table (the benchmark itself runs from the README)."""

from raywarp.bench.sampler import summary


def row(task, mode, warp, seconds=0.3):
    return {"task": task, "mode": mode, "warp": warp, "psnr": 30.0, "epe": 0.2, "flow s/frame": 0.04, "s/frame": seconds}


def test_summary_lists_each_task_only_with_its_own_modes():
    # Propagation is an inpainting baseline; SR has no such row and must not get an empty (nan) one.
    rows = [row("SR ×4", "independent", 0.002), row("SR ×4", "gp-warp", 0.001, 0.4),
            row("inpaint", "independent", 0.001), row("inpaint", "baseline (propagated)", 0.0005, 0.0),
            row("inpaint", "gp-warp", 0.0004, 0.4)]
    lines = summary(rows).splitlines()[2:]
    assert [line.split(" | ")[:2] for line in lines] == [
        ["| SR ×4", "independent"], ["| SR ×4", "gp-warp"],
        ["| inpaint", "independent"], ["| inpaint", "baseline (propagated)"], ["| inpaint", "gp-warp"]]
    assert "nan" not in summary(rows)
    assert lines[0].split(" | ")[2] == "0.00200" and lines[1].endswith("| 1.00 |")  # cost relative to gp-warp's
