"""Static checks of the deployment configs in cluster/ (fast: no network, no cluster).

- Cluster-launcher YAMLs (aws, gcp): validated against the JSON schema shipped in the
  installed ray (ray/autoscaler/ray-schema.json) and by Ray's own offline validator
  (prepare_config + validate_config, what `ray up` runs before touching the cloud),
  plus the layout raywarp relies on: a head with no CPUs, GPU groups on spot from zero.
- KubeRay RayCluster / RayJob: field checks (no CRD schema ships with ray).
- Runtime envs: built with ray.runtime_env.RuntimeEnv, keys limited to known fields.
- The image (cluster/Dockerfile, no Docker engine needed): FROM the Ray GPU image of the
  installed ray and Python, the pinned torch, the dependencies read from pyproject.toml,
  the project non-editable, cache-friendly layer order, the version label; .dockerignore
  keeps the build context to what the image copies.
- One image everywhere: every image reference in the configs and manifests is IMAGE (the
  project version from pyproject.toml), and no config installs anything per node.
- Versions: the Dockerfile's Ray tag and every rayVersion match the installed ray.
"""

import copy
import json
import os
import re
import shlex
import subprocess
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
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PYPROJECT_DEPS = PROJECT["dependencies"]
VERSION = PROJECT["version"]
PY = f"py{sys.version_info.major}{sys.version_info.minor}"
# The one image every node runs: cluster/Dockerfile built and pushed under this name (see
# cluster/README.md). Whoever pushes it elsewhere replaces IMAGE_REPO here and in cluster/.
IMAGE_REPO = "ghcr.io/raywarp/raywarp"
IMAGE = f"{IMAGE_REPO}:{VERSION}-gpu"
BASE_IMAGE = f"rayproject/ray:{ray.__version__}-{PY}-gpu"
DOCKERFILE = CLUSTER / "Dockerfile"
MANIFESTS = ["aws.yaml", "gcp.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
INSTALLS = re.compile(r"\b(pip3?|uv|conda|mamba|apt-get|apt)\b[^;&|]*\binstall\b")
PER_NODE_ENV_FIELDS = {"pip", "uv", "conda", "py_executable", "image_uri", "container"}


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

    # The image has the project; jobs bring their code with --working-dir: no copy of the
    # repository on the nodes, no setup that installs anything.
    for target, source in cfg.get("file_mounts", {}).items():
        # (a relative source is relative to where `ray up` runs: the repository root)
        assert (ROOT / Path(source).expanduser()).resolve() != ROOT, f"{target}: the repository is copied to the nodes"
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        for command in cfg.get(key, []):
            assert not INSTALLS.search(command), f"{key} installs per node: {command}"
    for name, nt in types.items():
        for key in ("initialization_commands", "setup_commands", "worker_setup_commands"):
            assert not any(INSTALLS.search(c) for c in nt.get(key, [])), f"{name}.{key} installs per node"


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
    RuntimeEnv(**env)  # type-checks env_vars (str -> str), working_dir, config
    # The nodes run IMAGE, which has every dependency: a job installs nothing per node.
    assert not set(env) & PER_NODE_ENV_FIELDS, set(env) & PER_NODE_ENV_FIELDS


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
    tags = re.findall(r"rayproject/ray(?:-ml)?:([\w.\-]+)", DOCKERFILE.read_text())
    assert tags and all(tag.startswith(f"{ray.__version__}-{PY}-") for tag in tags), tags
    for path in sorted(CLUSTER.glob("*.yaml")):
        for version in re.findall(r"rayVersion:\s*\"?([\w.]+)", path.read_text()):
            assert version == ray.__version__, path.name


# --- The image: cluster/Dockerfile and the build context ---------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    out, buf = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # also inside a continued instruction
            continue
        buf = stripped if buf is None else f"{buf} {stripped}"
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        instruction, _, args = buf.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = None
    assert buf is None, "the Dockerfile ends inside a continued instruction"
    return out


def shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line (split at && ; |), each as argv (redirects kept)."""
    commands, current = [], []
    for token in shlex.split(run):
        if token in {"&&", ";", "||", "|"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def pip_installs(run: str) -> list[list[str]]:
    """The arguments after `pip install` of each pip install in a RUN line."""
    return [c[2:] for c in shell_commands(run) if c[:2] in (["pip", "install"], ["pip3", "install"])]


def copies(instructions) -> list[tuple[int, str, list[str], str]]:
    """(index, --chown value, sources, destination) of every COPY / ADD."""
    out = []
    for i, (instruction, args) in enumerate(instructions):
        if instruction in {"COPY", "ADD"}:
            assert instruction == "COPY", "ADD fetches and unpacks; the image only copies"
            words = shlex.split(args)
            flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            assert set(flags) <= {"chown"}, flags  # no --from: one stage, built from the context
            out.append((i, flags.get("chown"), paths[:-1], paths[-1]))
    return out


def test_dockerfile():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    kinds = [instruction for instruction, _ in instructions]
    assert set(kinds) <= {"FROM", "LABEL", "RUN", "COPY", "ENV", "ARG", "WORKDIR", "USER"}, kinds
    # FROM the Ray GPU image of the pinned ray and this Python, once (one stage).
    assert [args for instruction, args in instructions if instruction == "FROM"] == [BASE_IMAGE]
    assert kinds[0] == "FROM"

    labels = {}
    for instruction, args in instructions:
        if instruction == "LABEL":
            labels.update(word.split("=", 1) for word in shlex.split(args))
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.title"] == PROJECT["name"]
    assert labels.get("org.opencontainers.image.base.name", BASE_IMAGE).endswith(BASE_IMAGE)

    # It runs as the base image's `ray` user (uid 1000): no USER root, no sudo.
    for instruction, args in instructions:
        assert instruction != "USER" or args.split(":")[0] in {"ray", "1000"}, args
        assert instruction != "RUN" or "sudo" not in shlex.split(args), args

    runs = [(i, args) for i, (instruction, args) in enumerate(instructions) if instruction == "RUN"]
    installs = [(i, argv) for i, args in runs for argv in pip_installs(args)]
    for _, argv in installs:
        assert not {"-e", "--editable", "--pre", "-i", "--index-url", "--extra-index-url", "-f",
                    "--find-links", "--user"} & set(argv), argv  # PyPI's wheels, non-editable
        assert all("[test]" not in a and not a.startswith(("pytest", "moto")) for a in argv), argv

    # 1. torch alone, at pyproject.toml's pin (PyPI's default wheel: the CUDA build).
    (torch_pin,) = [d for d in PYPROJECT_DEPS if re.match(r"torch\b", d)]
    assert "==" in torch_pin
    torch_at = [i for i, argv in installs if torch_pin in argv]
    assert torch_at and [a for a in installs[0][1] if not a.startswith("-")] == [torch_pin], installs[0]

    # 2. The other dependencies, from pyproject.toml alone: running the Dockerfile's own
    #    snippet on the repository's pyproject.toml gives exactly its dependencies.
    copied = copies(instructions)
    assert copied and all(chown and chown.split(":")[0] in {"ray", "1000"} for _, chown, _, _ in copied), copied
    dest = {src: d for _, _, sources, d in copied for src in sources}
    assert set(dest) == {"pyproject.toml", "README.md", "raywarp"}, dest  # what .dockerignore lets in
    project_dir = str(Path(dest["pyproject.toml"]).parent)
    assert dest["README.md"] in {f"{project_dir}/README.md", f"{project_dir}/"}
    assert dest["raywarp"].rstrip("/") == f"{project_dir}/raywarp"
    (deps_at, deps_run), = [(i, args) for i, args in runs if "tomllib" in args]
    argv = shell_commands(deps_run)[0]
    code, requirements = argv[argv.index("-c") + 1], argv[argv.index(">") + 1]
    code = code.replace(dest["pyproject.toml"], str(ROOT / "pyproject.toml"))
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert listed.split() == PYPROJECT_DEPS
    assert any(i == deps_at and requirements == argv[argv.index("-r") + 1] for i, argv in installs if "-r" in argv)

    # 3. The project itself, non-editable, from the copied source.
    project_at = [i for i, argv in installs if [a for a in argv if not a.startswith("-")] == [project_dir]]
    assert project_at, f"no `pip install {project_dir}`"

    # Cache-friendly order: torch, pyproject.toml, dependencies, then the source and the project.
    copy_at = {src: i for i, _, sources, _ in copied for src in sources}
    assert torch_at[0] < copy_at["pyproject.toml"] < deps_at < copy_at["raywarp"] < project_at[0]
    assert copy_at["README.md"] > deps_at  # the README changes more often than the dependencies


def dockerignore_rules() -> list[tuple[bool, str, re.Pattern]]:
    """.dockerignore as (exclude?, pattern, regex) in order; Docker's syntax: `*`, `?` and
    `[...]` within one path segment, `**` across segments, `!` re-includes, the last
    matching rule wins."""
    def part_regex(part):
        if part == "**":
            return ".*"
        if part == "*":
            return "[^/]*"
        if part == "?":
            return "[^/]"
        if part.startswith("[") and part.endswith("]") and len(part) > 2:
            return part
        return re.escape(part)

    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        regex = "".join(part_regex(part) for part in re.split(r"(\*\*|\*|\?|\[[^\]]+\])", pattern))
        rules.append((exclude, pattern, re.compile(regex.replace(".*/", "(.*/)?"))))
    return rules


def ignored(path: str, rules) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: a rule matches the path or
    one of its parent directories."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    result = False
    for exclude, _, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            result = exclude
    return result


def test_dockerignore_keeps_the_context_small():
    rules = dockerignore_rules()
    for path in (".git/HEAD", ".venv/bin/python", "out/a/b.mp4", "runs/x.json", "build/lib/x.py",
                 ".ray_tmp/x", "raywarp.egg-info/PKG-INFO", "tests/test_cli.py", "clip.mp4",
                 "raywarp/__pycache__/cli.cpython-311.pyc", "raywarp/pipeline/__pycache__/run.pyc",
                 "raywarp/samples/clip.mp4", "raywarp/x.parquet", "raywarp/flow.pyc"):
        assert ignored(path, rules), path
    # Everything the image copies gets in, the shipped weights included.
    sent = ["pyproject.toml", "README.md"] + [
        str(p.relative_to(ROOT)) for p in (ROOT / "raywarp").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".mp4", ".parquet"}]
    assert "raywarp/weights/densifier.safetensors" in sent
    assert not [p for p in sent if ignored(p, rules)]

    # The whole context, as Docker would send it: small.
    size, included = 0, [pattern for exclude, pattern, _ in rules if not exclude]
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = os.path.relpath(dirpath, ROOT)
        prefix = "" if rel == "." else rel + "/"
        # Skip a left-out directory unless a `!` rule may take something under it back.
        dirnames[:] = [d for d in dirnames if not ignored(prefix + d, rules)
                       or any(p.startswith(prefix + d + "/") or p.startswith("*") for p in included)]
        size += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames
                    if not ignored(prefix + f, rules) and os.path.isfile(os.path.join(dirpath, f)))
    assert size < 64 * 2**20, f"build context of {size / 2**20:.0f} MiB"


# --- One image everywhere ---------------------------------------------------------------


def image_references(node, path="") -> list[tuple[str, str]]:
    """(where, value) of every `image`, `head_image`, `worker_image` key, at any depth."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if re.fullmatch(r"(\w+_)?image", str(key)):
                found.append((where, value))
            found += image_references(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += image_references(value, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_node_runs_the_image(name):
    cfg = load(name)
    refs = image_references(cfg)
    assert refs, f"{name} names no image"
    assert all(value == IMAGE for _, value in refs), [r for r in refs if r[1] != IMAGE]
    if "available_node_types" in cfg:  # launcher: the cluster-wide image, no per-node override
        assert cfg["docker"]["image"] == IMAGE
    else:  # KubeRay: every container of every group
        spec = cfg["spec"].get("rayClusterSpec", cfg["spec"])
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        assert all(c["image"] == IMAGE for g in groups for c in containers_of(g["template"]))
    text = (CLUSTER / name).read_text()
    assert "rayproject/ray" not in text, "a stock Ray image, which lacks the project"
    assert not INSTALLS.search(json.dumps(cfg)), "a per-node install"


def test_image_is_documented():
    # The build and push commands name IMAGE, in the README and in the Dockerfile's header.
    build = f"docker build --platform linux/amd64 -f cluster/Dockerfile -t {IMAGE} ."
    push = f"docker push {IMAGE}"
    for path in (CLUSTER / "README.md", DOCKERFILE):
        text = path.read_text()
        assert build in text and push in text, path.name
