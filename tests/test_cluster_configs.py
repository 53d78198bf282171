"""Static checks of the deployment configs in cluster/ (fast: no network, no cluster).

- Cluster-launcher YAMLs (aws, gcp): validated against the JSON schema shipped in the
  installed ray (ray/autoscaler/ray-schema.json) and by Ray's own offline validator
  (prepare_config + validate_config, what `ray up` runs before touching the cloud),
  plus the layout raywarp relies on: a head with no CPUs, GPU groups on spot from zero.
- KubeRay RayCluster / RayJob: field checks (no CRD schema ships with ray).
- Runtime envs: built with ray.runtime_env.RuntimeEnv, keys limited to known fields.
- Versions: every Ray image tag and rayVersion matches the installed ray.
"""

import copy
import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
PYPROJECT_DEPS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def is_gpu_node(nt):
    cfg = nt["node_config"]
    return (nt["resources"].get("GPU", 0) > 0 or "guestAccelerators" in cfg
            or re.match(r"[gp]\d", cfg.get("InstanceType", "")) is not None)


def is_spot(provider, nt):
    cfg = nt["node_config"]
    if provider == "aws":
        return cfg.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    sched = cfg.get("scheduling", {})
    return sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_launcher_config(provider):
    cfg = load(f"{provider}.yaml")
    jsonschema.validate(cfg, json.loads(SCHEMA.read_text()))
    validate_config(prepare_config(copy.deepcopy(cfg)))
    assert cfg["provider"]["type"] == provider

    types, head = cfg["available_node_types"], cfg["head_node_type"]
    assert head in types
    assert types[head]["resources"] == {"CPU": 0}, "no tasks may be scheduled on the head"
    workers = {name: nt for name, nt in types.items() if name != head}
    assert sum(nt.get("min_workers", 0) for nt in workers.values()) <= cfg["max_workers"]
    for name, nt in workers.items():
        assert 0 <= nt.get("min_workers", 0) <= nt["max_workers"] <= cfg["max_workers"], name

    gpu = {name: nt for name, nt in workers.items() if is_gpu_node(nt)}
    assert gpu and len(gpu) < len(workers), "need a GPU group and a CPU decode group"
    for name, nt in gpu.items():
        assert nt.get("min_workers", 0) == 0, f"{name} must scale from zero"
        assert is_spot(provider, nt), f"{name} should run on spot/preemptible capacity"

    assert "~/raywarp" in cfg["file_mounts"]
    assert any("pip install" in c and "~/raywarp" in c for c in cfg["setup_commands"])


def containers_of(template):
    containers = template["spec"]["containers"]
    assert containers
    for c in containers:
        assert c["name"] and c["image"]
    return containers


def check_cluster_spec(spec):
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    opts = spec["autoscalerOptions"]
    assert opts["idleTimeoutSeconds"] > 0
    assert opts["upscalingMode"] in {"Conservative", "Default", "Aggressive"}

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    containers_of(head["template"])

    groups = spec["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names)
    gpu_groups = []
    for g in groups:
        # KubeRay types rayStartParams as map[string]string: unquoted numbers are rejected.
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        limits = containers_of(g["template"])[0]["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            gpu_groups.append((g, limits))
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert gpu_groups and len(gpu_groups) < len(groups), "need a GPU group and a CPU group"
    for g, limits in gpu_groups:
        assert g["minReplicas"] == 0, f"{g['groupName']} must scale from zero"
        assert limits["nvidia.com/gpu"] == 1
        tolerations = g["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def check_runtime_env(env):
    assert isinstance(env, dict) and set(env) <= RuntimeEnv.known_fields, set(env)
    RuntimeEnv(**env)  # type-checks env_vars (str -> str), pip, working_dir, config
    if "pip" in env:  # must match pyproject.toml, less ray (already in the image)
        expected = [d for d in PYPROJECT_DEPS if not d.startswith("ray")]
        assert sorted(env["pip"]) == sorted(expected)


def test_kuberay_raycluster():
    rc = load("kuberay-raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["name"]
    check_cluster_spec(rc["spec"])


def test_kuberay_rayjob():
    job = load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].split()[:2] == ["python", "jobs/restore.py"]
    assert "--address auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0
    check_runtime_env(yaml.safe_load(spec["runtimeEnvYAML"]))
    check_cluster_spec(spec["rayClusterSpec"])


def test_runtime_env_file():
    env = load("runtime_env.yaml")
    check_runtime_env(env)
    assert {".venv/", "out/", "runs/", ".ray_tmp/", "*.mp4"} <= set(env["excludes"])


def test_versions_match_installed_ray():
    pins = [d for d in PYPROJECT_DEPS if re.match(r"ray(\[.*\])?==", d)]
    assert pins and all(p.endswith("==" + ray.__version__) for p in pins)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    for path in sorted(CLUSTER.glob("*.yaml")):
        text = path.read_text()
        tags = re.findall(r"rayproject/ray(?:-ml)?:([\w.\-]+)", text)
        assert tags or path.name == "runtime_env.yaml", f"{path.name} names no Ray image"
        for tag in tags:
            assert tag.startswith(f"{ray.__version__}-{py}-"), f"{path.name}: {tag}"
        for version in re.findall(r"rayVersion:\s*\"?([\w.]+)", text):
            assert version == ray.__version__, path.name
