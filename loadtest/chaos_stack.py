"""The real parts the chaos benchmark (loadtest.chaos) runs and breaks, each a process a fault can kill:

  redis       a private redis-server (services.queue.redis_server.RedisServer): append-only file in
              its own data dir, so a restart on the same port and dir loads every acknowledged job back
  workers     Ray Serve with the worker apps of services/workers/serve_config.yaml (the real text app:
              the embedded D2F model on CPU; the image app in the full run), started here, or an
              already running Serve the caller deployed the apps on (the tests' session cluster)
  gateway     ONE process, `python -m services.gateway --config FILE`, dispatching off (as the Helm
              chart runs it); restarted on the same port after a kill, as a kubelet would
  dispatchers N processes, `python -m services.dispatcher --config FILE` (short claim_idle_ms and
              heartbeat_ms, so a dead one's jobs are reclaimed within the run); restarted after a kill,
              as a Deployment would

Every process gets the same worker credential (TESSERA_WORKER_TOKEN), set before Ray starts so the
replicas inherit it. Children run in sessions of their own (a Ctrl-C in the terminal reaches only the
harness, which stops them in order) and, where util-linux's `setpriv` exists, die with the harness
(parent-death signal), so even a harness killed -9 leaves no gateway or dispatcher behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.queue.redis_server import RedisServer, free_port
from services.workers.protocol import WORKER_TOKEN_ENV

ROOT = Path(__file__).resolve().parents[1]
# Environment overrides the services apply on top of their config files: never inherited, or a value in
# the caller's shell would point the gateway at another Redis.
_OVERRIDES = ("TESSERA_REDIS_URL", "TESSERA_WORKER_ADDRESS", "TESSERA_GATEWAY_PORT", "TESSERA_API_KEYS")
_SETPRIV = shutil.which("setpriv")


def python_path() -> str:
    """This checkout's code first (the SDK's stubs too), whatever is pip-installed."""
    return os.pathsep.join(dict.fromkeys(filter(None, [str(ROOT / "sdk"), str(ROOT),
                                                       *os.environ.get("PYTHONPATH", "").split(os.pathsep)])))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    env["PYTHONPATH"] = python_path()
    env.update(extra or {})
    return env


class Proc:
    """A service process the harness starts, kills (-9) and starts again with the same arguments.
    Output goes to a log file (appended across restarts)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.args, self.env, self.log_path = name, args, env, log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        # Popen from the thread that will outlive the child (the parent-death signal follows the thread
        # that forked it): the harness calls this from its main thread only.
        assert threading.current_thread() is threading.main_thread(), "start children from the main thread"
        self.starts += 1
        prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {self.name} start #{self.starts} at {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.popen = subprocess.Popen([*prefix, sys.executable, *self.args], cwd=ROOT, env=self.env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no drain, no cleanup."""
        if self.alive():
            assert self.popen is not None
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (the services drain or stop on it), SIGKILL after timeout_s."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ---- Ray Serve ------------------------------------------------------------------------------------------


@dataclass
class Workers:
    """The worker apps on Ray Serve; `address` is Serve's gRPC proxy. `plan` + `start`: this process
    starts Ray and Serve (and `stop` shuts them down); `external`: a Serve the caller runs and deployed
    the apps on (the tests' session cluster)."""

    address: str
    text_model: str
    image_model: str = ""  # "" = no image app
    apps: list[str] = field(default_factory=list)
    schema: Any = None  # the validated Serve config to deploy (None: external)
    started: bool = False

    @classmethod
    def plan(cls, images: bool) -> Workers:
        """The Serve config's text (and image) app, its proxies on free ports; nothing started yet."""
        from services.workers import serve_config

        apps = ["text", "image"] if images else ["text"]
        schema = serve_config.configure(only=apps, grpc_port=free_port(), http_port=free_port())
        return cls(f"127.0.0.1:{schema.grpc_options.port}", serve_config.app_args(schema, "text").model.name,
                   serve_config.app_args(schema, "image").model.name if images else "", apps, schema)

    @classmethod
    def external(cls, address: str, text_model: str = "d2f-arith", image_model: str = "") -> Workers:
        return cls(address, text_model, image_model, ["text", "image"] if image_model else ["text"])

    def start(self, num_cpus: int = 4, dashboard: bool = True) -> None:
        """A local Ray, Serve's proxies and the apps. TESSERA_WORKER_TOKEN must be set (replicas inherit it)."""
        import ray

        from services.workers.deploy import deploy, lenient_proxy_checks, start_serve

        assert self.schema is not None, "an external Serve is started by its owner"
        env = {"PYTHONPATH": python_path(), WORKER_TOKEN_ENV: os.environ[WORKER_TOKEN_ENV], **lenient_proxy_checks()}
        # The dashboard serves Ray's state API (ray.util.state.list_actors: how the replica fault finds
        # its victim); replicas' logs stay in Ray's session dir instead of this terminal.
        self.started = True
        ours = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, logging_level="warning", log_to_driver=False,
                 runtime_env={"env_vars": env})
        # ray.init takes SIGTERM over (its handler stops Ray's processes and exits, its core's C handler
        # aborts): give the signals back to the caller's handlers, which stop everything in order
        # (Ray's processes included, with ray.shutdown).
        for sig, handler in ours.items():
            if handler is not None:
                signal.signal(sig, handler)
        start_serve(self.schema)
        deploy(self.schema)

    def stop(self) -> None:
        if not self.started:
            return
        import ray

        # The local Ray this process started goes down with every process in it (replicas, proxies,
        # controller); serve.shutdown() first would only wait for the replicas to drain.
        with contextlib.suppress(Exception):
            ray.shutdown()


def alive_replicas(app: str = "text", deployment: str = "TextWorker") -> tuple[dict[str, int], str]:
    """ALIVE Serve replica actors of one deployment (class name `ServeReplica:<app>:<deployment>`):
    ({actor id: PID}, where that came from).

    Ray's state API (ray.util.state.list_actors, served by the dashboard) where the cluster has one; else
    the GCS actor table it reads (a Ray started without the dashboard, like the tests' session cluster)."""
    name = f"ServeReplica:{app}:{deployment}"
    try:
        from ray.util.state import list_actors

        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, timeout=10,
                             raise_on_missing_output=False)
        return {a.actor_id: a.pid for a in actors if a.class_name == name and a.pid}, "ray.util.state.list_actors"
    except Exception:  # ServerUnavailable / RayStateApiException: no dashboard in this cluster
        from ray._private.state import actors as actor_table  # the same GCS table, without the API server

        return ({aid: int(a["Pid"]) for aid, a in actor_table().items()
                 if a.get("State") == "ALIVE" and a.get("ActorClassName") == name and a.get("Pid")},
                "the GCS actor table (no dashboard)")


def app_running(app: str) -> bool:
    from ray import serve

    apps = serve.status().applications
    return app in apps and apps[app].status == "RUNNING"


# ---- the stack ------------------------------------------------------------------------------------------


@dataclass
class StackOptions:
    dispatchers: int = 2
    claim_idle_ms: int = 3000
    heartbeat_ms: int = 500
    max_in_flight: int = 8
    redis_fsync: str = "everysec"
    redis_persistence: bool = True  # False: no AOF (only to show the benchmark catches what that loses)


class ChaosStack:
    """Redis + the gateway process + dispatcher processes, in `run_dir`, in front of `workers`."""

    def __init__(self, workers: Workers, run_dir: Path, opts: StackOptions) -> None:
        self.workers, self.run_dir, self.opts = workers, run_dir, opts
        self.api_key = "chaos-" + secrets.token_urlsafe(12)
        self.prefix = f"chaos{os.urandom(3).hex()}:"
        self.redis = RedisServer(data_dir=run_dir / "redis", fsync=opts.redis_fsync, persist=opts.redis_persistence)
        self.gateway_port = free_port()
        self.gateway: Proc | None = None
        self.dispatchers: list[Proc] = []
        self._dispatcher_ports: dict[int, int] = {}  # id(proc) -> its metrics port (a readiness signal)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def services(self) -> list[str]:
        return ["text", "image"] if self.workers.image_model else ["text"]

    def _dispatch_section(self, enabled: bool) -> dict[str, Any]:
        o = self.opts
        return {"enabled": enabled, "worker_address": self.workers.address, "services": self.services,
                "max_in_flight": o.max_in_flight, "claim_idle_ms": o.claim_idle_ms, "heartbeat_ms": o.heartbeat_ms}

    def start(self) -> ChaosStack:
        """Redis, then the gateway and the dispatchers; returns once the gateway answers SERVING."""
        self.redis.start()
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        gw_cfg = {"host": "127.0.0.1", "port": self.gateway_port, "metrics_port": 0, "redis_url": self.redis.url,
                  "key_prefix": self.prefix, "grace_s": 2.0,
                  "text": {"models": [self.workers.text_model]},
                  "auth": {"enabled": True},
                  "dispatcher": self._dispatch_section(False)}
        if self.workers.image_model:
            gw_cfg["images"] = {"models": [self.workers.image_model]}
        (self.run_dir / "gateway.yaml").write_text(yaml.safe_dump(gw_cfg))
        (self.run_dir / "dispatcher.yaml").write_text(yaml.safe_dump({
            "redis_url": self.redis.url, "key_prefix": self.prefix, "dispatcher": self._dispatch_section(True)}))
        digest = hashlib.sha256(self.api_key.encode()).hexdigest()
        # One key whose rate limit is far above the load: the benchmark measures faults, not quotas.
        self.gateway = Proc("gateway", ["-m", "services.gateway", "--config", str(self.run_dir / "gateway.yaml")],
                            child_env({"TESSERA_API_KEYS": f"chaos:{digest}:100000:100000"}), logs / "gateway.log")
        self.gateway.start()
        for i in range(self.opts.dispatchers):
            port = free_port()
            d = Proc(f"dispatcher{i}", ["-m", "services.dispatcher", "--config", str(self.run_dir / "dispatcher.yaml"),
                                        "--metrics-port", str(port), "--grace-s", "2"],
                     child_env(), logs / f"dispatcher{i}.log")
            self._dispatcher_ports[id(d)] = port
            d.start()
            self.dispatchers.append(d)
        return self

    # ---- readiness ----
    async def wait_gateway(self, timeout_s: float = 90.0) -> float:
        """Seconds until the gateway answers SERVING (a new process imports grpc, protobuf, redis...)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        t0 = time.monotonic()
        async with grpc.aio.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                assert self.gateway is not None
                if not self.gateway.alive():
                    raise RuntimeError(f"the gateway exited:\n{self.gateway.log_tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - t0
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"the gateway did not answer SERVING within {timeout_s:.0f}s:\n"
                                       f"{self.gateway.log_tail()}")
                await asyncio.sleep(0.1)

    async def wait_dispatcher(self, d: Proc, timeout_s: float = 90.0) -> float:
        """Seconds until a dispatcher process serves its metrics (it starts dispatching right after)."""
        url = f"http://127.0.0.1:{self._dispatcher_ports[id(d)]}/metrics"
        t0 = time.monotonic()

        def up() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return True
            except OSError:
                return False

        while not await asyncio.to_thread(up):
            if not d.alive():
                raise RuntimeError(f"{d.name} exited:\n{d.log_tail()}")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{d.name} did not start within {timeout_s:.0f}s:\n{d.log_tail()}")
            await asyncio.sleep(0.2)
        return time.monotonic() - t0

    async def wait_ready(self) -> None:
        await asyncio.gather(self.wait_gateway(), *(self.wait_dispatcher(d) for d in self.dispatchers))

    # ---- faults (the harness's side of each: kill, then bring back as the platform would) ----
    async def busiest_dispatcher(self) -> int:
        """The dispatcher holding the most jobs now (pending entries per consumer of the queues' group;
        a consumer is named <host>-<pid>-<random>), so its kill leaves jobs to reclaim; 0 if none holds any."""
        import redis.asyncio as aioredis

        held: collections.Counter[int] = collections.Counter()
        r = aioredis.from_url(self.redis.url)
        try:
            for svc in self.services:
                with contextlib.suppress(aioredis.ResponseError):
                    info = await r.xpending(f"{self.prefix}queue:{svc}", "dispatchers")
                    for c in info.get("consumers") or []:
                        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                        with contextlib.suppress(ValueError, IndexError):
                            held[int(name.rsplit("-", 2)[1])] += int(c["pending"])
        finally:
            await r.aclose()
        by_pid = {d.pid: i for i, d in enumerate(self.dispatchers) if d.alive()}
        ranked = [(n, by_pid[pid]) for pid, n in held.items() if pid in by_pid and n > 0]
        return max(ranked)[1] if ranked else 0

    async def kill_dispatcher(self, i: int | None = None, down_s: float = 1.0) -> tuple[float, int]:
        """kill -9 dispatcher i (default: the busiest); start it again `down_s` later (a Deployment
        replacing its pod). Returns (seconds until the new process is up, which one was killed)."""
        i = await self.busiest_dispatcher() if i is None else i
        d = self.dispatchers[i]
        t0 = time.monotonic()
        d.kill9()
        await asyncio.sleep(down_s)
        d.start()
        await self.wait_dispatcher(d)
        return time.monotonic() - t0, i

    async def kill_gateway(self, down_s: float = 1.0) -> float:
        """kill -9 the gateway; start it again on the same port `down_s` later (a kubelet restarting the
        container). Returns seconds until it answers SERVING again."""
        assert self.gateway is not None
        t0 = time.monotonic()
        self.gateway.kill9()
        await asyncio.sleep(down_s)
        self.gateway.start()
        await self.wait_gateway()
        return time.monotonic() - t0

    async def restart_redis(self, crash: bool, down_s: float = 1.0) -> float:
        """Stop Redis (SIGTERM: the AOF is flushed; or, with `crash`, SIGKILL) and start it again on the
        same port and data dir `down_s` later. Returns seconds until it answers PING."""
        t0 = time.monotonic()
        await asyncio.to_thread(self.redis.kill if crash else self.redis.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.redis.start)
        return time.monotonic() - t0

    async def ensure_up(self) -> None:
        """Between phases: every process the harness owns is running (restarting any that died)."""
        assert self.gateway is not None
        if not self.gateway.alive():
            self.gateway.start()
        for d in self.dispatchers:
            if not d.alive():
                d.start()
        await self.wait_ready()

    def close(self) -> None:
        """Gateway and dispatchers first (SIGTERM: they drain), then Redis."""
        procs = [p for p in (self.gateway, *self.dispatchers) if p is not None]
        for p in procs:
            with contextlib.suppress(Exception):
                if p.alive():
                    assert p.popen is not None
                    p.popen.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
        self.redis.stop()
