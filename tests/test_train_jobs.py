"""The training jobs end to end on a real local Ray (Ray Train, one CPU worker), tiny runs."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from conftest import own_ray
from raywarp.densify.network import DEFAULT_WEIGHTS, load_densifier
from raywarp.models import load_denoiser

ROOT = Path(__file__).resolve().parents[1]


def job(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import ray

    own_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.mark.slow
def test_train_densifier_job_writes_loadable_weights(local_ray, tmp_path, monkeypatch):
    out = tmp_path / "d.safetensors"
    monkeypatch.setattr(sys, "argv", ["train_densifier.py", "--iterations", "2"])
    assert job("train_densifier").main(["--iterations", "2", "--batch", "2", "--sizes", "32", "--cpus-per-worker", "1",
                                        "--out", str(out), "--storage", str(tmp_path / "runs")]) == 0
    assert load_densifier(out).levels == 4
    assert "jobs/train_densifier.py --iterations 2" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_train_densifier_job_fine_tunes_from_weights_on_large_crops(local_ray, tmp_path, monkeypatch):
    # lr 0: the result must be the starting weights exactly; 136 px crops run the extra
    # coarse level inference gives frames over 128 px.
    out = tmp_path / "d.safetensors"
    monkeypatch.setattr(sys, "argv", ["train_densifier.py"])
    assert job("train_densifier").main(["--iterations", "1", "--batch", "1", "--sizes", "136", "--lr", "0",
                                        "--init", str(DEFAULT_WEIGHTS), "--cpus-per-worker", "1",
                                        "--out", str(out), "--storage", str(tmp_path / "runs")]) == 0
    tuned, shipped = load_densifier(out).state_dict(), load_densifier().state_dict()
    assert tuned.keys() == shipped.keys() and all(torch.equal(tuned[k], shipped[k]) for k in shipped)


@pytest.mark.slow
def test_train_prior_job_writes_a_loadable_model(local_ray, tmp_path, monkeypatch):
    out = tmp_path / "prior"
    monkeypatch.setattr(sys, "argv", ["train_prior.py", "--iterations", "2"])
    train = job("train_prior")
    args = ["--iterations", "2", "--batch", "2", "--size", "32", "--cpus-per-worker", "1",
            "--storage", str(tmp_path / "runs"), "--bank", "1"]
    assert train.main(args + ["--out", str(out)]) == 0
    assert load_denoiser(str(out)).conditional
    assert "jobs/train_prior.py --iterations 2" in (out / "README.md").read_text()
    # Fine-tuning a local UNet2DModel through --model.
    assert train.main(args + ["--model", str(out), "--out", str(tmp_path / "tuned")]) == 0
    assert load_denoiser(str(tmp_path / "tuned")).conditional
