"""The container images (docker/), checked without building them: no base image can be pulled here, so
`make images` skips (scripts/build_image.sh). What can be checked on the source is: pinned bases that
match the project's pins, the gateway image's packages against requirements.lock, its user against the
chart, that what each image COPYs exists and reaches the build context, and that the gateway and
dispatcher import neither torch nor Ray and nothing the slim gateway image lacks."""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
GATEWAY = DOCKER / "gateway.Dockerfile"
WORKER = DOCKER / "worker.Dockerfile"
GATEWAY_REQS = DOCKER / "gateway-requirements.txt"

# What the gateway and dispatcher processes run (the chart's commands: python -m services.gateway / .dispatcher).
GATEWAY_ENTRIES = ("services.gateway.server", "services.dispatcher.__main__")
# Imported by the gateway's packages only when installed (try/except ImportError), so present in the dev
# venv but not in the image: grpc's runtime .proto loading, redis-py's OpenTelemetry and OCSP support.
OPTIONAL_IMPORTS = {"grpc_tools", "opentelemetry", "psutil", "cryptography", "cffi", "_cffi_backend"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, cur = [], ""
    for raw in dockerfile.read_text().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        cur += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _args(dockerfile: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in _instructions(dockerfile) if op == "ARG" and "=" in a)


def _bases(dockerfile: Path) -> list[str]:
    """Every FROM's image with ${ARG}s expanded; stage names (FROM <stage>) are left out."""
    args, stages, bases = _args(dockerfile), set(), []
    for op, a in _instructions(dockerfile):
        if op != "FROM":
            continue
        words = [w for w in a.split() if not w.startswith("--")]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
        if image not in stages:
            bases.append(image)
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return bases


def _copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (COPY --from=<stage> left out)."""
    out = []
    for op, a in _instructions(dockerfile):
        if op != "COPY":
            continue
        words = shlex.split(a)
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def _dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps rel (or a folder above it) out of the context. Handles the patterns
    the file uses: plain paths, globs and a leading **/ (any depth, including none); no `!` exceptions."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.lstrip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "extend _dockerignored for ! patterns"
    parts = Path(rel).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        pat = pat.rstrip("/")
        for prefix in prefixes:
            if pat.startswith("**/"):
                tail = pat[3:]
                names = prefix.split("/")
                if any(fnmatch.fnmatchcase("/".join(names[i:]), tail) for i in range(len(names))):
                    return True
            elif fnmatch.fnmatchcase(prefix, pat) and prefix.count("/") == pat.count("/"):
                return True
    return False


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if version:
            pins[canonicalize_name(name)] = version
    return pins


def _gateway_pins() -> dict[str, str]:
    pins = {}
    for line in GATEWAY_REQS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = [s for s in req.specifier if s.operator == "=="]
            assert len(spec) == 1 and len(req.specifier) == 1, f"{line!r} is not pinned with =="
            pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def _pyproject_pin(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        req = Requirement(d)
        if canonicalize_name(req.name) == name:
            return next(s.version for s in req.specifier if s.operator == "==")
    raise AssertionError(f"{name} is not in pyproject.toml's dependencies")


def _makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\??=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile sets no {name}"
    return m.group(1)


# -- base images ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [GATEWAY, WORKER], ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    bases = _bases(dockerfile)
    assert bases, f"{dockerfile.name} has no FROM"
    for image in bases:
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else ""
        assert tag, f"{dockerfile.name}: base {image} has no tag (that is latest)"
        assert not re.search(r"(^|-)(latest|nightly)($|-)", tag), f"{dockerfile.name}: base {image} moves"
    # scripts/build_image.sh checks the ARG BASE_IMAGE default for presence: it must be what FROM uses.
    assert _args(dockerfile).get("BASE_IMAGE") in bases


def test_gateway_base_is_the_projects_python() -> None:
    minor = re.search(r">=(3\.\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                      ["requires-python"]).group(1)
    assert set(_bases(GATEWAY)) == {f"python:{minor}-slim"}


def test_worker_base_is_the_pinned_ray_with_cuda_and_matching_torch() -> None:
    (base,) = _bases(WORKER)
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d+)-(?P<cuda>cu\d+)", base)
    assert m, f"worker base {base} is not a rayproject/ray <version>-py<xy>-cu<xy> image"
    assert m["ray"] == _pyproject_pin("ray") == _lock()["ray"]
    assert m["py"] == "311"
    args = _args(WORKER)
    assert args["TORCH_VERSION"] == _pyproject_pin("torch") == _lock()["torch"].split("+")[0]
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith("/" + m["cuda"]), \
        "torch's CUDA wheel index should be the base image's CUDA"


# -- what the gateway image installs ---------------------------------------------------------------------

def test_gateway_pins_are_the_lock() -> None:
    lock, pins = _lock(), _gateway_pins()
    assert pins, "gateway-requirements.txt pins nothing"
    wrong = {n: (v, lock.get(n)) for n, v in pins.items() if lock.get(n) != v}
    assert not wrong, f"gateway image pins differ from requirements.lock (pin, lock): {wrong}"
    assert not {"torch", "ray", "kserve"} & set(pins)


def test_gateway_pins_are_a_closed_set() -> None:
    """The image installs the file with --no-deps, so everything its packages and the SDK require (their
    markers evaluated for the image's Python 3.11 on Linux) must be in it; installed metadata says what."""
    pins = _gateway_pins()
    env = default_environment() | {"python_version": "3.11", "python_full_version": "3.11.14",
                                   "sys_platform": "linux", "platform_system": "Linux"}
    sdk_deps = tomllib.loads((ROOT / "sdk/pyproject.toml").read_text())["project"]["dependencies"]
    missing = {}
    for dist, reqs in [(n, md.requires(n) or []) for n in pins] + [("tessera (sdk)", sdk_deps)]:
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate(env | {"extra": ""}):
                if canonicalize_name(r.name) not in pins:
                    missing.setdefault(dist, []).append(str(r))
                elif pins[canonicalize_name(r.name)] not in r.specifier:
                    missing.setdefault(dist, []).append(f"{r} (pinned {pins[canonicalize_name(r.name)]})")
    assert not missing, f"not satisfied by gateway-requirements.txt: {missing}"


def _gateway_imports() -> dict:
    """What the gateway and dispatcher processes import (beyond interpreter start-up), in a fresh
    interpreter. services.gateway.__main__ only imports server.main and calls it, so server stands in."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"  # what site start-up loaded (e.g. setuptools' .pth hook) is not theirs
        f"for m in {GATEWAY_ENTRIES!r}: __import__(m)\n"
        "files = {n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}\n"
        "print(json.dumps({'modules': sorted(set(sys.modules) - before), 'files': files}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gateway_imports() -> dict:
    return _gateway_imports()


def test_gateway_and_dispatcher_import_neither_torch_nor_ray(gateway_imports: dict) -> None:
    tops = {m.split(".")[0] for m in gateway_imports["modules"]}
    assert "services.gateway.server" in gateway_imports["modules"]
    assert "services.dispatcher.dispatcher" in gateway_imports["modules"]
    heavy = tops & {"torch", "ray", "kserve", "diffusers", "transformers", "safetensors", "tokenizers", "models"}
    assert not heavy, f"the gateway and dispatcher import {sorted(heavy)}: the slim gateway image lacks them"


def test_gateway_imports_only_what_its_image_installs(gateway_imports: dict) -> None:
    dists = md.packages_distributions()
    pins = _gateway_pins()
    lacking = {}
    for top in sorted({m.split(".")[0] for m in gateway_imports["modules"]}):
        if top in sys.stdlib_module_names or top in OPTIONAL_IMPORTS or top in ("services", "tessera"):
            continue
        names = {canonicalize_name(d) for d in dists.get(top, [])}
        if names and not names & set(pins):
            lacking[top] = sorted(names)
    assert not lacking, f"imported by the gateway but not in gateway-requirements.txt: {lacking}"


def test_gateway_image_copies_every_first_party_module_it_imports(gateway_imports: dict) -> None:
    copied = [(ROOT / src).resolve() for srcs, _ in _copies(GATEWAY) for src in srcs]
    outside = []
    for name, file in gateway_imports["files"].items():
        top = name.split(".")[0]
        if top == "tessera":  # the SDK: installed from sdk/ in the build stage
            assert file and Path(file).resolve().is_relative_to(ROOT / "sdk" / "tessera"), (name, file)
        elif top == "services":
            path = Path(file).resolve()
            if not any(path == c or path.is_relative_to(c) for c in copied):
                outside.append(str(path.relative_to(ROOT)))
    assert not outside, f"imported by the gateway but not copied into its image: {sorted(outside)}"


# -- COPY sources, user, layout ---------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [GATEWAY, WORKER], ids=lambda p: p.name)
def test_copied_files_exist_and_reach_the_context(dockerfile: Path) -> None:
    copies = _copies(dockerfile)
    assert copies, f"{dockerfile.name} copies nothing"
    for srcs, _ in copies:
        for src in srcs:
            rel = src.rstrip("/")
            assert (ROOT / rel).exists(), f"{dockerfile.name}: COPY {src}: no such file in the repo"
            assert not _dockerignored(rel), f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_heavy_and_private_out() -> None:
    for rel in (".venv", ".git", ".tessera", "bench-results", "tests", "services/gateway/__pycache__",
                "services/gateway/test_units.py", "tessera_platform.egg-info"):
        assert _dockerignored(rel), f"{rel} is in the build context"
    assert not _dockerignored("services/gateway/server.py")


def test_gateway_runs_as_the_charts_user() -> None:
    users = [a for op, a in _instructions(GATEWAY) if op == "USER"]
    assert users, "the gateway image runs as root"
    uid = users[-1].split(":")[0]
    assert uid == "10001", f"gateway image USER {users[-1]}: the chart's runAsUser is 10001 (numeric, so " \
                           "runAsNonRoot can check it)"
    for name in ("gateway-deployment.yaml", "dispatcher-deployment.yaml"):
        text = (ROOT / "helm/tessera/templates" / name).read_text()
        assert re.search(r"runAsUser:\s*10001\b", text), f"{name} no longer runs as 10001"


def test_gateway_image_settings() -> None:
    ops = _instructions(GATEWAY)
    assert not [a for op, a in ops if op in ("ENTRYPOINT", "CMD")], "the chart sets the command"
    assert [a for op, a in ops if op == "WORKDIR"][-1] == "/app"
    env = " ".join(a for op, a in ops if op == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert setting in env, setting
    run = " ".join(a for op, a in ops if op == "RUN")
    assert "--no-deps" in run and "pip check" in run, "the closed pin set relies on --no-deps + pip check"


def test_worker_keeps_the_repository_layout() -> None:
    """Relative model_dirs resolve against the folder holding services/ (services/workers/config.py)."""
    dests = {src.rstrip("/"): dest.rstrip("/") for srcs, dest in _copies(WORKER) for src in srcs}
    for d in ("services", "models", "checkpoints", "sdk"):
        assert dests.get(d) == d, f"worker image: COPY {d}/ should land at <project>/{d}"
    assert not [a for op, a in _instructions(WORKER) if op == "USER"], "runs as the Ray image's own user"
    run = " ".join(a for op, a in _instructions(WORKER) if op == "RUN")
    assert "-e ." in run, "the project is installed in place (editable), so REPO_ROOT is the copied tree"


# -- make targets -----------------------------------------------------------------------------------------

def test_make_tags_are_the_charts_defaults() -> None:
    values = yaml.safe_load((ROOT / "helm/tessera/values.yaml").read_text())["image"]
    for var, key in (("GATEWAY_IMAGE", "gateway"), ("WORKER_IMAGE", "worker")):
        assert _makefile_var(var) == f"{values[key]['repository']}:{values[key]['tag']}", var


def _fake_docker(tmp_path: Path, info_ok: bool, inspect_ok: bool) -> Path:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n"
                    f'echo "$@" >> {tmp_path}/calls\n'
                    f'case "$1" in info) exit {0 if info_ok else 1};; image) exit {0 if inspect_ok else 1};; esac\n'
                    "exit 0\n")
    fake.chmod(0o755)
    return fake


def _make(target: str, docker: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", target], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=os.environ | {"DOCKER": docker})


@pytest.mark.parametrize(("info_ok", "inspect_ok", "reason"), [
    (None, None, "no container engine"),
    (False, True, "daemon does not answer"),
    (True, False, "is not present locally"),
], ids=["no-docker", "no-daemon", "no-base-image"])
def test_make_images_skips_with_the_reason(tmp_path: Path, info_ok: bool | None, inspect_ok: bool | None,
                                           reason: str) -> None:
    docker = str(tmp_path / "no-such-docker") if info_ok is None else str(_fake_docker(tmp_path, info_ok,
                                                                                       inspect_ok))
    out = _make("images", docker)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("Skipping")]
    assert len(lines) == 2 and all(reason in ln for ln in lines), out.stdout
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    assert " build " not in f" {calls} "


def test_make_image_builds_when_the_base_is_present(tmp_path: Path) -> None:
    out = _make("image-gateway", str(_fake_docker(tmp_path, True, True)))
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert f"image inspect {_args(GATEWAY)['BASE_IMAGE']}" in calls
    assert calls[-1] == f"build -f docker/gateway.Dockerfile -t {_makefile_var('GATEWAY_IMAGE')} .", calls
