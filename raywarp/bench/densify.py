"""Densification benchmark: EPE and time per method, and the solver's iteration savings.

    python -m raywarp.bench.densify [--scenes 32] [--size 128]

Sets (none seen in training):
- held-out affine: layers of the held-out photographs (synthetic.HELDOUT_PHOTOS), each
  with its own affine motion, exact flow (the scenes earlier versions called "held-out
  generated", unchanged);
- real: the Middlebury 2014 Motorcycle stereo pair shipped with scikit-image, ground
  truth from its disparity (evaluated where the disparity is valid);
- held-out perspective: the held-out photographs on slanted planes at different depths
  seen by a moving camera (homographies with parallax), exact flow.
Masks: i.i.d. known pixels at 1 %, 5 %, 10 % density, and structured holes. EPE is the
mean end-point error over the filled (unknown, valid) pixels; time is per image, batch
of one, on this machine's CPU unless --device says otherwise. Neuroexplicit is scored as
shipped (the fills of the frame and its left-right mirror averaged) and in one pass
(`mirror_average=False`).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from raywarp import synthetic
from raywarp.densify import densify
from raywarp.densify.training import masked_epe

MASKS = ("1%", "5%", "10%", "holes")
PLAIN_STEPS = (95, 190, 475, 950, 1900, 4750, 9500)
VARIANTS = {"laplace": {"method": "laplace"}, "eed": {"method": "eed"}, "neuroexplicit": {"method": "neuroexplicit"},
            "one pass": {"method": "neuroexplicit", "mirror_average": False}}


def make_mask(rng: np.random.Generator, kind: str, size) -> np.ndarray:
    if kind == "holes":
        return synthetic.hole_mask(rng, size)
    return synthetic.iid_mask(rng, size, float(kind.rstrip("%")) / 100)


def evaluation_sets(scenes: int, size: int, real_draws: int) -> dict[str, list[dict]]:
    """{set name: [case dicts with image (1,3,H,W), flow, valid (1,1,H,W), known per mask kind]}."""
    rng = np.random.default_rng(2024)

    def generated(seed: int, motion: str) -> list[dict]:
        batch = synthetic.make_batch(seed, scenes, (size, size), synthetic.HELDOUT_PHOTOS, motions=(motion,))
        return [{"image": batch["frame0"][i : i + 1], "flow": batch["flow"][i : i + 1],
                 "valid": torch.ones(1, 1, size, size)} for i in range(scenes)]

    stereo = synthetic.stereo_pair(scale=2)
    # Masks are drawn set by set in this order, so adding a set after the others keeps theirs.
    cases = {
        "held-out affine": generated(7, "affine"),
        "real (Motorcycle)": [{"image": stereo["frame0"], "flow": stereo["flow"], "valid": stereo["valid"]}
                              for _ in range(real_draws)],  # several mask draws on the one real pair
        "held-out perspective": generated(8, "perspective"),
    }
    for case_list in cases.values():
        for case in case_list:
            hw = tuple(case["image"].shape[-2:])
            case["known"] = {k: torch.from_numpy(make_mask(rng, k, hw))[None, None] * case["valid"] for k in MASKS}
    return cases


def run_method(case, kind, device, **kw):
    known = case["known"][kind].to(device)
    args = (case["flow"].to(device) * known, known, case["image"].to(device))
    start = time.perf_counter()
    with torch.no_grad():
        out = densify(*args, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    epe = float(masked_epe(out.cpu(), case["flow"], (1 - case["known"][kind]) * case["valid"]))
    return epe, seconds


def benchmark(scenes: int, size: int, real_draws: int, device: torch.device, plain_max: int = PLAIN_STEPS[-1]) -> list[dict]:
    plain_steps = [n for n in PLAIN_STEPS if n <= plain_max]
    rows = []
    for set_name, cases in evaluation_sets(scenes, size, real_draws).items():
        for kind in MASKS:
            row = {"set": set_name, "mask": kind}
            for name, options in VARIANTS.items():
                run_method(cases[0], kind, device, **options)  # warm-up (weights, allocator)
                results = [run_method(c, kind, device, **options) for c in cases]
                row[name] = float(np.mean([r[0] for r in results]))
                row[name + " ms"] = 1000 * float(np.median([r[1] for r in results]))
            # The accelerated solver (95 steps) against plain explicit iteration (one level,
            # no FSI) with the same Laplace tensor: its EPE at 10x the steps, and the
            # fewest steps (of PLAIN_STEPS) that reach the accelerated EPE within 1 %.
            # (on the first 4 cases: thousands of full-resolution steps per case add up)
            plain = {n: float(np.mean([run_method(c, kind, device, method="laplace", steps=(n,), fsi=False,
                                                  coarsest_side=None)[0] for c in cases[:4]]))
                     for n in plain_steps}
            accelerated = float(np.mean([run_method(c, kind, device, method="laplace")[0] for c in cases[:4]]))
            row["plain 950"] = plain.get(950, float("nan"))
            row["plain steps"] = next((n for n in plain_steps if plain[n] <= accelerated * 1.01), None)
            row["plain max"] = plain_steps[-1]
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| set | mask | Laplace EPE | EED EPE | neuroexplicit EPE | vs Laplace | vs EED | one pass EPE "
            "| ms Laplace / EED / neuroexplicit / one pass | plain explicit Laplace, 950 steps* | plain steps to match 95* |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        plain = f"{r['plain steps']} ({r['plain steps'] / 95:.0f}×)" if r["plain steps"] else f"> {r['plain max']}"
        lines.append(
            f"| {r['set']} | {r['mask']} | {r['laplace']:.3f} | {r['eed']:.3f} | {r['neuroexplicit']:.3f} "
            f"| {100 * (r['neuroexplicit'] / r['laplace'] - 1):+.0f} % | {100 * (r['neuroexplicit'] / r['eed'] - 1):+.0f} % "
            f"| {r['one pass']:.3f} | {r['laplace ms']:.1f} / {r['eed ms']:.1f} / {r['neuroexplicit ms']:.1f} / "
            f"{r['one pass ms']:.1f} | {r['plain 950']:.3f} | {plain} |"
        )
    lines.append("\n*on the first 4 cases of each row, against the accelerated Laplace solver's EPE on the same cases")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=32, help="held-out generated scenes per set")
    p.add_argument("--real-draws", type=int, default=8, help="mask draws on the real pair")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--plain-max", type=int, default=PLAIN_STEPS[-1], help="most plain explicit steps tried")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = benchmark(args.scenes, args.size, args.real_draws, device, args.plain_max)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    print(f"densification benchmark: {args.scenes} held-out scenes at {args.size}², {args.real_draws} mask draws "
          f"on the real pair (250×370); device: {where}")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
