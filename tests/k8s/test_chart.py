"""The Helm chart (helm/tessera), proven without a cluster: a real helm binary lints and renders it over
several value sets, every rendered object is validated against Kubernetes' schemas (built-in kinds, two
versions) or the strict schemas derived from the upstream CRDs (custom kinds), bad values fail naming
the key, and the rendered bytes run: the RayService's serveConfigV2 starts on real Ray Serve here, and
the gateway's and dispatcher's rendered commands, env and config files run as local processes that
serve a text generation end to end through the SDK."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.workers import serve_config
from services.workers.config import REPO_ROOT
from services.workers.protocol import token_metadata
from tests.k8s.validate import validate_builtin, validate_custom

HELM = Path(sys.executable).with_name("helm")
CHART = REPO_ROOT / "helm/tessera"
# Problems of the embedded model's world (3 to 8 changes; docs/training.md), with their answers 10 and 17.
TOM = "Tom has 5 apples. He buys 3 more. He finds 4 more. He sells 2. How many apples does Tom have now?"
MIA = ("Mia has 12 shells. She finds 7 more. She gives 3. She buys 5 more. She loses 4. "
       "How many shells does Mia have now?")
CUSTOM_GROUPS = ("ray.io/", "keda.sh/", "monitoring.coreos.com/", "serving.kserve.io/")

pytestmark = pytest.mark.skipif(not HELM.exists(), reason="helm is installed by `make setup` (scripts/k8s_tools.sh)")

CPU_TEXT_ONLY: dict[str, Any] = {"workers": {"apps": {
    "image": {"enabled": False}, "understanding": {"enabled": False},
    "text": {"gpus": 0, "nodeSelector": None, "tolerations": [],
             "args": {"model": {"device": "cpu", "dtype": "float32"}}},
}}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu-pools": {"workers": {"apps": {
        "text": {"gpus": 2, "maxReplicas": 8, "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
        "image": {"nodeSelector": {"pool": "h100"}, "tolerations": [{"key": "gpu", "operator": "Equal",
                                                                     "value": "h100", "effect": "NoSchedule"}]}}}},
    "external-redis": {"redis": {"embedded": {"enabled": False}, "external": {"urlSecret": "tessera-redis-url"}}},
    "autoscaling-off": {"workers": {"enableInTreeAutoscaling": False},
                        "gateway": {"pdb": {"enabled": False}, "autoscaling": {"enabled": False}},
                        "dispatcher": {"autoscaling": {"enabled": False}}},
    "monitoring-off": {"monitoring": {k: {"enabled": False} for k in ("serviceMonitor", "podMonitor", "rules",
                                                                      "dashboard")}},
    "cpu-text-only": CPU_TEXT_ONLY,
    "keys-and-pull-secrets": {"image": {"pullSecrets": ["regcred"]}, "gateway": {"apiKeys": {"keys": [
        {"id": "team-a", "sha256": "0" * 64, "rate_per_s": 5, "burst": 10}]}, "service": {"headless": False}}},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def helm(*args: str, values: dict[str, Any] | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    f = tmp / "values.yaml"
    f.write_text(yaml.safe_dump(values or {}))
    return subprocess.run([str(HELM), *args, str(CHART), "-f", str(f)], capture_output=True, text=True, timeout=120)


def render(values: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    out = helm("template", "t", "--namespace", "tessera", values=values, tmp=tmp)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict(name: str, tmp_path: Path) -> None:
    out = helm("lint", "--strict", values=VALUE_SETS[name], tmp=tmp_path)
    assert out.returncode == 0 and "0 chart(s) failed" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid(name: str, tmp_path: Path) -> None:
    docs = render(VALUE_SETS[name], tmp_path)
    kinds = sorted({d["kind"] for d in docs})
    assert {"Deployment", "Service", "ConfigMap", "RayService"} <= set(kinds)
    errors = []
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        check = validate_custom if d["apiVersion"].startswith(CUSTOM_GROUPS) else validate_builtin
        errors += [f"{where}: {e}" for e in check(d)]
    assert not errors, "\n".join(errors)


def test_install_dry_run_with_the_defaults_prints_how_to_reach_the_gateway(tmp_path: Path) -> None:
    out = helm("install", "tessera", "--dry-run=client", "--namespace", "tessera", values={}, tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "kubectl port-forward -n tessera svc/tessera-gateway 50051:50051" in notes
    assert "No API keys are configured" in notes  # the defaults hold no key: say how to add one


def test_values_schema_is_the_scripts_output() -> None:
    out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/chart_values_schema.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_autoscalers_own_the_replicas_they_scale(tmp_path: Path) -> None:
    on = render({}, tmp_path)
    assert "replicas" not in one(on, "Deployment", "t-tessera-gateway")["spec"]
    assert "replicas" not in one(on, "Deployment", "t-tessera-dispatcher")["spec"]
    hpa = one(on, "HorizontalPodAutoscaler", "t-tessera-gateway")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "t-tessera-gateway" and (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    scaled = one(on, "ScaledObject", "t-tessera-dispatcher")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "t-tessera-dispatcher"
    assert [t["metadata"]["query"] for t in scaled["triggers"]] == [
        'sum(max by (service) (tessera_queue_depth_jobs{namespace="tessera"}))',
        'max(tessera_queue_oldest_job_age_seconds{namespace="tessera"})']
    off = render(VALUE_SETS["autoscaling-off"], tmp_path)
    assert one(off, "Deployment", "t-tessera-gateway")["spec"]["replicas"] == 2
    assert not [d for d in off if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]


def test_worker_api_is_closed_to_all_but_the_gateway_and_dispatchers(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    ray = one(docs, "RayService", "t-tessera-workers")["spec"]["rayClusterConfig"]
    containers = {"gateway": one(docs, "Deployment", "t-tessera-gateway")["spec"]["template"]["spec"]["containers"][0],
                  "dispatcher": one(docs, "Deployment", "t-tessera-dispatcher")["spec"]["template"]["spec"]
                  ["containers"][0],
                  "head": ray["headGroupSpec"]["template"]["spec"]["containers"][0],
                  **{g["groupName"]: g["template"]["spec"]["containers"][0] for g in ray["workerGroupSpecs"]}}
    # Every side of the worker API takes the same credential from the same (generated) Secret.
    for name, c in containers.items():
        token = [e for e in c["env"] if e["name"] == "TESSERA_WORKER_TOKEN"]
        assert token == [{"name": "TESSERA_WORKER_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "t-tessera-worker-token", "key": "token"}}}], name
    assert len(one(docs, "Secret", "t-tessera-worker-token")["data"]["token"]) >= 40
    gateway_env = {e["name"]: e.get("value") for e in containers["gateway"]["env"]}
    dispatcher_cfg = yaml.safe_load(one(docs, "ConfigMap", "t-tessera-dispatcher")["data"]["dispatcher.yaml"])
    assert gateway_env["TESSERA_WORKER_ADDRESS"] == dispatcher_cfg["dispatcher"]["worker_address"]
    # Serve's gRPC port admits the gateway and dispatchers only; Redis likewise.
    workers = one(docs, "NetworkPolicy", "t-tessera-workers")["spec"]
    grpc_port = yaml.safe_load(ray_serve_config(docs))["grpc_options"]["port"]
    callers = [r for r in workers["ingress"] if r.get("ports") == [{"port": grpc_port, "protocol": "TCP"}]]
    assert len(callers) == 1
    assert callers[0]["from"][0]["podSelector"]["matchExpressions"][1]["values"] == ["gateway", "dispatcher"]
    assert all(r.get("ports") for r in workers["ingress"][1:])  # only Ray's own pods get every port
    redis = one(docs, "NetworkPolicy", "t-tessera-redis")["spec"]["ingress"]
    assert redis[0]["ports"] == [{"port": 6379, "protocol": "TCP"}]
    # The gateway's liveness survives a Redis outage; its readiness does not.
    probes = containers["gateway"]
    assert probes["livenessProbe"]["grpc"]["service"] == "tessera.liveness"
    assert "service" not in probes["readinessProbe"]["grpc"]
    assert not [d for d in render({"networkPolicy": {"enabled": False}}, tmp_path) if d["kind"] == "NetworkPolicy"]


def ray_serve_config(docs: list[dict[str, Any]]) -> str:
    return one(docs, "RayService", "t-tessera-workers")["spec"]["serveConfigV2"]


def metric_names(docs: list[dict[str, Any]]) -> set[str]:
    """Every tessera_* metric the ScaledObject, the PrometheusRule and the dashboard query, and the
    ray_serve_* ones (Serve's own, exported by Ray's metrics agent)."""
    text = []
    for d in docs:
        if d["kind"] == "ScaledObject":
            text += [t["metadata"]["query"] for t in d["spec"]["triggers"]]
        elif d["kind"] == "PrometheusRule":
            text += [r["expr"] for g in d["spec"]["groups"] for r in g["rules"]]
        elif d["kind"] == "ConfigMap" and "tessera.json" in d.get("data", {}):
            text += [t["expr"] for p in json.loads(d["data"]["tessera.json"])["panels"] for t in p["targets"]]
    # Ray's metrics agent prefixes the workers' metrics with ray_ (and counters with _total).
    return set(re.findall(r"\b(?:(?:ray_)?tessera|ray_serve)_[a-z_]+", " ".join(text)))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_serve_config_v2_is_the_projects_file_with_the_values_overrides(name: str, tmp_path: Path) -> None:
    values = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), VALUE_SETS[name])
    ray = one(render(VALUE_SETS[name], tmp_path), "RayService", "t-tessera-workers")
    rendered = yaml.safe_load(ray["spec"]["serveConfigV2"])
    schema = serve_config.validate(rendered)  # the project's strict checks (args, cuda vs num_gpus, ...)
    shipped = {a["name"]: a for a in serve_config.read()["applications"]}
    enabled = [n for n in shipped if values["workers"]["apps"][n]["enabled"]]
    assert [a.name for a in schema.applications] == enabled
    assert rendered["grpc_options"] == serve_config.read()["grpc_options"]
    groups = {g["groupName"]: g for g in ray["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert sorted(groups) == sorted(enabled)  # one GPU pool per app
    for app in rendered["applications"]:
        v = values["workers"]["apps"][app["name"]]
        want = _merge(shipped[app["name"]]["args"], v["args"])
        assert app["args"] == want  # the file's args with the values' merged in, key by key
        (dep,) = app["deployments"]
        assert dep["autoscaling_config"] == v["autoscaling"] and "num_replicas" not in dep
        assert dep["ray_actor_options"]["resources"] == {f"tessera_{app['name']}": 1}
        group = groups[app["name"]]
        assert group["resources"] == {f"tessera_{app['name']}": str(max(1, v["gpus"]))}
        container = group["template"]["spec"]["containers"][0]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
        assert gpus == v["gpus"] and dep["ray_actor_options"]["num_gpus"] == min(1, v["gpus"])
        assert group["template"]["spec"].get("nodeSelector", {}) == (v["nodeSelector"] or {})


BAD_VALUES = [
    ({"gateway": {"replicas": -1}}, "/gateway/replicas"),
    ({"gateway": {"replicaz": 2}}, "additional properties 'replicaz' not allowed"),
    ({"workers": {"apps": {"text": {"gpus": 1, "nodeSelector": None}}}}, "'nodeSelector'"),  # GPU pool: which nodes
    ({"workers": {"apps": {"text": {"minReplicas": 5, "maxReplicas": 2}}}}, "workers.apps.text.minReplicas (5)"),
    ({"workers": {"apps": {"image": {"autoscaling": {"min_replicas": 3, "max_replicas": 1}}}}},
     "workers.apps.image.autoscaling.min_replicas (3)"),
    ({"gateway": {"resources": {"limits": {"cpu": "two"}}}}, "/gateway/resources/limits/cpu"),
    ({"gateway": {"resources": {"limits": {"gpu": 1}}}}, "additional properties 'gpu' not allowed"),
    ({"workers": {"apps": {"video": {}}}}, "additional properties 'video' not allowed"),
    ({"workers": {"apps": {"text": {"gpus": 0, "nodeSelector": {}}}}}, "workers.apps.text.gpus"),  # cuda, no GPU
    ({"redis": {"embedded": {"enabled": False}}}, "redis.external.urlSecret"),
    ({"gateway": {"port": 70000}}, "/gateway/port"),
    ({"gateway": {"apiKeys": {"keys": [{"id": "a", "sha256": "not-a-hash"}]}}}, "/gateway/apiKeys/keys/0/sha256"),
    ({"gateway": {"pdb": {"minAvailable": 2}}}, "gateway.pdb.minAvailable (2) must be < gateway.replicas (2)"),
    ({"workers": {"rayVersion": "latest"}}, "/workers/rayVersion"),
    ({"image": {"gateway": {"pullPolicy": "Sometimes"}}}, "/image/gateway/pullPolicy"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES)
def test_bad_values_fail_naming_the_key(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    """values.schema.json errors fail `helm lint --strict` and `helm template`; what JSON Schema cannot say
    (min <= max across keys, a cuda model on a pool without GPUs) is a template `fail`, which fails
    `helm template`/`install` while Helm 4's lint only reports it (it logs `fail` as INFO by design)."""
    template = helm("template", "t", values=values, tmp=tmp_path)
    assert template.returncode != 0, f"helm template accepted {values}"
    assert message in template.stderr, template.stderr
    lint = helm("lint", "--strict", values=values, tmp=tmp_path)
    assert message in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    if "funcMap fail" not in lint.stderr:  # a schema error: lint fails too
        assert lint.returncode != 0, f"helm lint accepted {values}"


# --- the rendered bytes, run here ---------------------------------------------------------------------

def deploy_rendered(docs: list[dict[str, Any]], serve_cluster: Any) -> None:
    """The rendered RayService's serveConfigV2 onto this machine's Serve (its ports), through the same
    validation as the file; only the `tessera_<app>` resources go, as this Ray has no worker groups."""
    from services.workers.deploy import deploy

    cfg = yaml.safe_load(one(docs, "RayService", "t-tessera-workers")["spec"]["serveConfigV2"])
    for app in cfg["applications"]:
        for d in app["deployments"]:
            d["ray_actor_options"].pop("resources")
    deploy(serve_config.configure(cfg, grpc_port=serve_cluster.grpc_port, http_port=serve_cluster.http_port))


def test_rendered_serve_config_starts_on_real_serve_and_answers(serve_cluster: Any, tmp_path: Path) -> None:
    import grpc
    from ray import serve

    from tessera.worker.v1 import worker_pb2_grpc
    from tessera.worker.v1.worker_pb2 import GenerateTextRequest

    deploy_rendered(render(CPU_TEXT_ONLY, tmp_path), serve_cluster)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{serve_cluster.grpc_port}") as ch:
            msgs = list(worker_pb2_grpc.TextWorkerServiceStub(ch).GenerateText(
                GenerateTextRequest(prompt=TOM, max_tokens=128), metadata=(("application", "text"), *token_metadata()),
                timeout=120))
        assert msgs[-1].finished and "The answer is 10." in "".join(m.text for m in msgs)
    finally:
        serve.delete("text")


# Environment the cluster supplies (Secrets; Service DNS names, which resolve to loopback here): the
# rendered entries must exist, and the test gives them their local values.
CLUSTER_SUPPLIED = {"TESSERA_REDIS_URL", "TESSERA_WORKER_ADDRESS", "TESSERA_WORKER_TOKEN"}


def _process(container: dict[str, Any], files: dict[str, str], env: dict[str, str], root: Path) -> list[str]:
    """A rendered container as a local command: its files written under `root` where it mounts them."""
    for path, text in files.items():
        local = root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text.replace("/etc/tessera/", f"{root}/etc/tessera/"))
    for e in container["env"]:
        if "value" in e and e["name"] not in CLUSTER_SUPPLIED:
            env[e["name"]] = e["value"]
    cmd = [a.replace("/etc/tessera/", f"{root}/etc/tessera/") for a in container["command"]]
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]]


@pytest.fixture()
def rendered_stack(redis_server: Any, serve_cluster: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    from ray import serve

    from services.queue.redis_server import free_port

    key = "test-key-" + os.urandom(4).hex()
    ports = {"gateway": free_port(), "metrics": free_port(), "dispatcher": free_port()}
    values = _merge(CPU_TEXT_ONLY, {
        "redis": {"embedded": {"enabled": False}, "external": {"urlSecret": "redis-url"}, "keyPrefix": "helm-e2e:"},
        "gateway": {"port": ports["gateway"], "metricsPort": ports["metrics"],
                    "apiKeys": {"keys": [{"id": "e2e", "sha256": hashlib.sha256(key.encode()).hexdigest()}]}},
        "dispatcher": {"metricsPort": ports["dispatcher"]}})
    docs = render(values, tmp_path)
    deploy_rendered(docs, serve_cluster)
    keys = one(docs, "Secret", "t-tessera-api-keys")["stringData"]["keys.yaml"]
    # What the cluster would supply: the Redis URL Secret, and the Serve Service's address.
    env = {**os.environ, "TESSERA_REDIS_URL": redis_server.url,
           "TESSERA_WORKER_ADDRESS": f"127.0.0.1:{serve_cluster.grpc_port}"}
    procs = []
    try:
        gateway_yaml = one(docs, "ConfigMap", "t-tessera-gateway")["data"]["gateway.yaml"]
        dispatcher_yaml = one(docs, "ConfigMap", "t-tessera-dispatcher")["data"]["dispatcher.yaml"]
        for name, files in (("gateway", {"/etc/tessera/gateway.yaml": gateway_yaml,
                                         "/etc/tessera/keys/keys.yaml": keys}),
                            ("dispatcher", {"/etc/tessera/dispatcher.yaml": dispatcher_yaml})):
            container = one(docs, "Deployment", f"t-tessera-{name}")["spec"]["template"]["spec"]["containers"][0]
            root = tmp_path / name
            cmd = _process(container, files, env, root)
            procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=(root / "log").open("w"),
                                          stderr=subprocess.STDOUT))
        yield {"address": f"127.0.0.1:{ports['gateway']}", "key": key, "docs": docs,
               "metrics": [ports["metrics"], ports["dispatcher"]], "ray_metrics": serve_cluster.metrics_port}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        serve.delete("text")


def test_rendered_gateway_and_dispatcher_serve_a_generation_through_the_sdk(rendered_stack: dict[str, Any]) -> None:
    import tessera

    address, key, docs = rendered_stack["address"], rendered_stack["key"], rendered_stack["docs"]
    deadline = time.monotonic() + 60
    with tessera.Client(address, api_key=key) as client:
        while True:
            try:
                result = client.generate_text(MIA, max_tokens=128, timeout=60)
                break
            except tessera.TesseraError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    assert result.finish_reason == "stop" and "The answer is 17." in result.text and result.model == "d2f-arith"
    # After the generation: every metric the chart's autoscaling, alerts and dashboard use is one the
    # running gateway or dispatcher, or Ray's metrics agent for the worker replicas, really exports.
    used = metric_names(docs)
    assert len(used) >= 12 and "ray_serve_deployment_replica_healthy" in used
    assert any(n.startswith("ray_tessera_") for n in used)

    def exported_by(ports: list[int]) -> set[str]:
        names: set[str] = set()
        for port in ports:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            names |= set(re.findall(r"^(?:# TYPE )?((?:(?:ray_)?tessera|ray_serve)_[a-z_]+)", body, re.M))
        return names

    def missing(names: set[str], exported: set[str]) -> list[str]:
        base = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in exported}
        return sorted(n for n in names if n not in exported and re.sub(r"_(bucket|sum|count|total)$", "", n)
                      not in base)

    ours = {n for n in used if not n.startswith("ray_")}
    assert not missing(ours, exported_by(rendered_stack["metrics"])), "the chart queries metrics nobody exports"
    ray_names = used - ours
    deadline = time.monotonic() + 60  # Ray's agent exports replica metrics every few seconds
    while gone := missing(ray_names, exported_by([rendered_stack["ray_metrics"]])):
        assert time.monotonic() < deadline, f"Ray's metrics agent never exported {gone}"
        time.sleep(2)
