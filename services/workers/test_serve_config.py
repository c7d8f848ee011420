"""The worker apps' Serve config file: Ray's schema, the builders Serve calls, and the checks Serve
leaves out (no running Ray needed: building an app is local)."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from ray._common.utils import import_attr
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from services.workers import serve_config
from services.workers.builders import FAMILIES
from services.workers.config import REPO_ROOT, ConfigError
from services.workers.family import CONTROL_SERVICER
from services.workers.server import WorkerServer

Mutation = Callable[[dict[str, Any]], None]


def test_shipped_file_is_a_serve_config_of_the_three_worker_apps() -> None:
    raw = serve_config.read()
    ServeDeploySchema.model_validate(raw)  # Ray's own schema, as `serve run` and a RayService read it
    schema = serve_config.load()
    assert [a.name for a in schema.applications] == ["text", "image", "understanding"]
    assert set(schema.grpc_options.grpc_servicer_functions) == {f.servicer for f in FAMILIES.values()} | {
        CONTROL_SERVICER}
    for app in schema.applications:
        family = serve_config.family_of(app)
        assert family is FAMILIES[app.name] and app.route_prefix == family.route_prefix
        assert [d.name for d in app.deployments] == [family.deployment]


@pytest.mark.parametrize("name", ["text", "image", "understanding"])
def test_serve_builds_each_app_with_its_args_through_its_own_builder_call(name: str) -> None:
    app = next(a for a in serve_config.load().applications if a.name == name)
    # What `serve run` and the controller do with an import_path and args.
    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
    deployment = built._bound_deployment
    assert deployment.name == FAMILIES[name].deployment
    assert deployment.func_or_class is WorkerServer  # one server class for every family
    family, args = deployment.init_args
    assert family is FAMILIES[name] and args == family.args.load(app.args)
    # Serve validates args against the builder's pydantic annotation: a typo never reaches a replica.
    with pytest.raises(ValidationError, match=r"Extra inputs are not permitted|Unexpected keyword"):
        call_user_app_builder_with_args_if_necessary(import_attr(app.import_path),
                                                     {**app.args, "modle": {}})


def _set(path: str, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = d
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return mutate


@pytest.mark.parametrize("mutation,message", [
    (_set("proxy_locaton", "EveryNode"), "proxy_locaton: unknown key"),
    (_set("applications/0/args/model/decoder/tau_cnf", 1), "applications[0].args.model.decoder.tau_cnf: unknown key"),
    (_set("applications/0/deployments/0/ray_actor_options/num_gpu", 1),
     "applications[0].deployments[0].ray_actor_options.num_gpu: unknown key"),  # Ray's schema drops it silently
    (_set("applications/0/deployments/0/autoscaling_config", {"min_replicas": 1, "max_replica": 4}),
     "applications[0].deployments[0].autoscaling_config.max_replica: unknown key"),
    (_set("applications/1/imprt_path", "x:y"), "applications[1].imprt_path: unknown key"),
    (_set("applications/0/deployments/0/num_replicas", 0), "applications[0].deployments[0].num_replicas"),
    (_set("applications/0/args/model/device", "cuda"),
     "applications[0].deployments[TextWorker].ray_actor_options.num_gpus: the model runs on 'cuda'"),
    (_set("applications/1/args/batching/max_batch_size", 32), "max_ongoing_requests: 16 < args.batching"),
    (_set("applications/2/deployments/0/name", "Understanding"), "['Understanding'] not in the app"),
    (_set("applications/0/import_path", "services.workers.builders:build_txt_app"), "cannot import"),
    (_set("grpc_options/grpc_servicer_functions", []), "the text app needs"),
    (_set("applications/0/args/model/max_tokens_limit", 0), "max_tokens_limit must be >= 1"),
    (_set("applications/1/args/model/nextstep", {"negtive_prompt": "blurry"}),
     "applications[1].args.model.nextstep.negtive_prompt: unknown key"),
    (_set("applications/1/args/model/nextstep", {"edit_shift": 0}),
     "applications[1].args.model.nextstep: edit_shift must be in (0, 100]"),
    (_set("applications/1/args/model", {"backend": "orthus", "name": "o", "model_dir": "checkpoints/shapes-orthus",
                                        "nextstep": {"negative_prompt": "blurry"}}),
     "model.nextstep applies to backend nextstep only"),
])
def test_bad_configs_are_refused_with_the_key_path(mutation: Mutation, message: str) -> None:
    data = copy.deepcopy(serve_config.read())
    mutation(data)
    with pytest.raises(ConfigError) as err:
        serve_config.validate(data)
    assert message in str(err.value)


def test_load_names_the_file(tmp_path: Any) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text((serve_config.DEFAULT_PATH.read_text()).replace("method: d2f", "method: beam"))
    with pytest.raises(ConfigError, match=r"serve\.yaml: applications\[0\]\.args\.model: model\.method must be"):
        serve_config.load(bad)


def test_configure_applies_overrides_and_validates_them() -> None:
    schema = serve_config.configure(only=["understanding", "text"], grpc_port=9100, http_port=8100,
                                    args={"text": {"model": {"device": "cuda", "decoder": {"tau_add": 0.2}}}},
                                    deployments={"text": {"ray_actor_options": {"num_gpus": 1}, "num_replicas": 2}})
    assert [a.name for a in schema.applications] == ["understanding", "text"]
    assert (schema.grpc_options.port, schema.http_options.port) == (9100, 8100)
    text = schema.applications[1]
    model = text.args["model"]
    assert model["device"] == "cuda" and model["decoder"] == {"block_size": 32, "tau_add": 0.2, "tau_act": 0.95,
                                                              "tau_conf": 0.9}  # merged key by key
    assert text.deployments[0].num_replicas == 2 and text.deployments[0].ray_actor_options.num_gpus == 1
    assert text.deployments[0].max_ongoing_requests == 16  # the file's, kept
    assert serve_config.read()["applications"][0]["args"]["model"]["device"] == "cpu"  # the file is untouched
    with pytest.raises(ConfigError, match="no application"):
        serve_config.configure(only=["video"])
    with pytest.raises(ConfigError, match="the model runs on 'cuda'"):  # overrides are checked like the file
        serve_config.configure(args={"text": {"model": {"device": "cuda"}}})


def test_check_command_validates_the_file_the_way_serve_run_would_read_it(tmp_path: Any) -> None:
    run = [sys.executable, "-m", "services.workers", "--check"]
    ok = subprocess.run([*run, "text"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "valid; apps ['text']" in ok.stdout, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(serve_config.DEFAULT_PATH.read_text().replace("num_gpus: 0}", "num_gpu: 0}", 1))
    out = subprocess.run([*run, "--config", str(bad)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "ray_actor_options.num_gpu: unknown key" in out.stderr
