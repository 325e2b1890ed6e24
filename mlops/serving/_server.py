"""The local Triton: the tritonserver binary bundled in nvidia-pytriton, run detached.

The server outlives the CLI process that starts it, so everything another
process needs to find it again lives under the state directory::

    <state>/triton/            runtime: bin/, backends/python/ (+ the stub for this Python), caches/
    <state>/triton/server.json how it was started: pid, repository, host and ports
    <state>/pids/triton.pid    its pid
    <state>/logs/triton.log    its output (the previous run's in triton.log.1)

The paths are the state directory's layout (mlops._layout); pid file, log, readiness wait and stop are the
one supervisor's (mlops._process), which targets use for their services too. Triton's URLs are spelled out
here only (:func:`base_url`, :func:`http_url`, :func:`grpc_url`, :func:`metrics_url`); everything else asks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from mlops._atomic import write_atomic
from mlops._layout import Layout
from mlops._process import Supervisor, check_ports_free, taken_ports
from mlops.errors import ServiceError
from mlops.recipe.schema import ServingConfig
from mlops.serving import _repository

EXIT_TIMEOUT_S = 5
DRAIN_TIMEOUT_S = 10.0
DRAIN_QUIET_S = 0.5
# Loaded, and failing to load, only while draining: with strict readiness a
# model that failed to load turns /v2/health/ready false while every other
# model keeps answering. Recipe model names start with a letter, so it cannot
# collide with one.
DRAIN_MODEL = "_mlops_draining"
_POLL_S = 0.05


def _base_url(host: str, port: int | str) -> str:
    return f"http://{host}:{port}"


def base_url(serving: ServingConfig) -> str:
    """``http://host:port`` of the HTTP endpoint: what users see, and what the functions here accept."""
    return _base_url(serving.host, serving.http_port)


def http_url(serving: ServingConfig) -> str:
    """``host:port`` of the HTTP endpoint, the form tritonclient expects."""
    return _host_port(base_url(serving))


def grpc_url(serving: ServingConfig) -> str:
    """``host:port`` of the gRPC endpoint, the form gRPC clients expect."""
    return f"{serving.host}:{serving.grpc_port}"


def metrics_url(serving: ServingConfig) -> str:
    """The Prometheus metrics endpoint."""
    return f"http://{serving.host}:{serving.metrics_port}/metrics"


class TritonServer:
    """Start, find and stop the one local tritonserver of a state directory.

    Every method reads the pid file afresh, so a later CLI process manages a
    server an earlier one started.
    """

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        layout = Layout(self.state_dir)
        self.runtime_dir = layout.triton
        self.info_path = layout.triton_info
        # SIGTERM to the server only: it unloads its models and stops its python-backend stubs itself,
        # within --exit-timeout-secs; the group gets SIGKILL only if it does not. A recycled pid that is
        # no longer a tritonserver is never signalled.
        self.process = Supervisor("triton", layout, label="tritonserver", program="tritonserver",
                                  rotate_log=True, term_group=False)
        self.pid_path = self.process.pid_file
        self.log_path = self.process.log_file

    def start(self, repo: Path, serving: ServingConfig, models: Sequence[str] = ()) -> str:
        """Spawn tritonserver on ``repo`` with ``models`` loaded; returns the HTTP ``host:port`` (:func:`http_url`).

        Returns once ``/v2/health/live`` answers (and, with models, ``/v2/health/ready``),
        within ``serving.ready_timeout_s``. Starting a server that already runs with
        the same repository and ports does nothing.
        """
        repo = Path(repo).resolve()
        info = {
            "repository": str(repo),
            "host": serving.host,
            "http_port": serving.http_port,
            "grpc_port": serving.grpc_port,
            "metrics_port": serving.metrics_port,
        }
        pid = self.pid()
        if pid is not None:
            running = self._info()
            if {k: running.get(k) for k in info} == info:
                # A repeated `up` is a no-op; Triton reloads a model only if
                # its files changed.
                for model in models:
                    load(model, http_url(serving), timeout=serving.ready_timeout_s)
                return http_url(serving)
            raise ServiceError(
                f"Triton already runs from {self.state_dir} (pid {pid}) with repository {running.get('repository')} "
                f"on ports {running.get('http_port')}/{running.get('grpc_port')}/{running.get('metrics_port')}; "
                "stop it first (`mlops down`) to start it with different settings."
            )
        check_ports_free("Triton", {f"serving.{k}": (serving.host, getattr(serving, k))
                                    for k in ("http_port", "grpc_port", "metrics_port")})
        shutil.rmtree(repo / DRAIN_MODEL, ignore_errors=True)  # left by a drain that was cut short

        runtime = self._prepare_runtime()
        cmd = [
            str(runtime / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={runtime / 'backends'}",
            f"--cache-directory={runtime / 'caches'}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            f"--http-address={serving.host}",
            f"--http-port={serving.http_port}",
            f"--grpc-address={serving.host}",
            f"--grpc-port={serving.grpc_port}",
            f"--metrics-address={serving.host}",
            f"--metrics-port={serving.metrics_port}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            # A model that fails to load then makes /v2/health/ready false
            # instead of being silently absent.
            "--strict-readiness=true",
            # config.pbtxt is written complete (model_config_pb2), so the python backend's auto-complete pass is
            # only cost: it starts one more stub per loaded version and waits for it, 1.3 s of every deploy here.
            "--disable-auto-complete-config",
        ]
        proc = self.process.spawn(cmd, _server_env(), cwd=runtime)
        write_atomic(self.info_path, json.dumps({"pid": proc.pid, **info}, indent=2) + "\n")

        base = base_url(serving)
        ready = [("live", lambda: _http_ok(base + "/v2/health/live"))]
        if models:
            ready.append(("ready", lambda: _http_ok(base + "/v2/health/ready")))
        try:
            self.process.wait_ready(proc, ready, serving.ready_timeout_s, "serving.ready_timeout_s")
        except ServiceError:
            self._forget()
            raise
        return http_url(serving)

    def pid(self) -> int | None:
        """The pid of the running server, or None; a stale pid file is removed on the way."""
        pid = self.process.pid()
        if pid is None:
            self._forget()
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def stop(self, timeout: float = EXIT_TIMEOUT_S + 10, drain_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Drain (see :func:`drain`, at most ``drain_s`` s; 0 skips it), then SIGTERM, then SIGKILL to the
        whole process group after ``timeout`` s.

        Returns whether a server was running. Returns only once its ports are free.
        """
        pid = self.pid()
        if pid is None:
            return False
        info = self._info()
        if drain_s > 0 and self.url() and _http_ok(self.url() + "/v2/health/live"):
            try:
                self.drain(timeout=drain_s)
            except ServiceError:
                pass  # a server too broken to drain is still stopped
        self.process.stop(timeout=timeout)
        self._forget()
        if info.get("repository"):
            shutil.rmtree(Path(info["repository"]) / DRAIN_MODEL, ignore_errors=True)
        ports = [(k, info[k]) for k in ("http_port", "grpc_port", "metrics_port") if k in info]
        deadline = time.monotonic() + 5
        while taken := taken_ports(info.get("host", "127.0.0.1"), ports):
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"tritonserver (pid {pid}) stopped, but ports {', '.join(str(p) for _, p in taken)} "
                    "are still in use; another process holds them."
                )
            time.sleep(_POLL_S)
        return True

    def url(self) -> str | None:
        """:func:`base_url` of the server as it was started (server.json), or None if there is none."""
        info = self._info()
        return _base_url(info.get("host", "127.0.0.1"), info["http_port"]) if "http_port" in info else None

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> dict | None:
        """:func:`drain` the running server; None if none runs."""
        info = self._info()
        if self.pid() is None or not info.get("repository") or self.url() is None:
            return None
        return drain(Path(info["repository"]), self.url(), timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        return self.process.log_tail(lines)

    def _info(self) -> dict:
        try:
            return json.loads(self.info_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _forget(self) -> None:
        self.pid_path.unlink(missing_ok=True)
        self.info_path.unlink(missing_ok=True)

    def _prepare_runtime(self) -> Path:
        """Assemble bin/, backends/ and caches/ once; the wheel lacks the stub in backends/python/."""
        source = _bundled_tritonserver()
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = source / "python_backend_stubs" / py / "triton_python_backend_stub"
        if not stub.exists():
            have = sorted(p.name for p in (source / "python_backend_stubs").iterdir())
            raise ServiceError(
                f"nvidia-pytriton ships no python-backend stub for Python {py} (it has {', '.join(have)}); "
                "run mlops with one of those Python versions."
            )
        stamp = json.dumps({"source": str(source), "python": py})
        stamp_path = self.runtime_dir / "runtime.json"
        if stamp_path.exists() and stamp_path.read_text() == stamp:
            return self.runtime_dir

        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=self.runtime_dir))
        try:
            # Symlinks, not copies: the binaries keep their RPATHs into the
            # wheel, and the runtime costs no disk.
            (tmp / "bin").mkdir()
            (tmp / "bin" / "tritonserver").symlink_to(source / "bin" / "tritonserver")
            (tmp / "backends" / "python").mkdir(parents=True)
            for f in (source / "backends" / "python").iterdir():
                if f.is_file():
                    (tmp / "backends" / "python" / f.name).symlink_to(f)
            (tmp / "backends" / "python" / stub.name).symlink_to(stub)
            (tmp / "caches").symlink_to(source / "caches")
            for name in ("bin", "backends", "caches"):
                old = self.runtime_dir / name
                if old.is_symlink() or old.is_file():
                    old.unlink()
                elif old.exists():
                    shutil.rmtree(old)
                os.rename(tmp / name, old)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        write_atomic(stamp_path, stamp)
        return self.runtime_dir


def load(model_name: str, url: str, timeout: float = 120, version: int | None = None) -> None:
    """Load (or reload, picking up a re-pointed config.pbtxt) ``model_name`` and wait until it is ready
    (``version`` of it, when given)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=_host_port(url), network_timeout=timeout)
    try:
        client.load_model(model_name)
        deadline = time.monotonic() + timeout
        while not client.is_model_ready(model_name, "" if version is None else str(version)):
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"model {model_name!r} was loaded by Triton at {url} but not ready within {timeout:g} s."
                )
            time.sleep(_POLL_S)
    except InferenceServerException as e:
        raise ServiceError(
            f"Triton at {url} could not load model {model_name!r}: {e.message()}. "
            "The server log (logs/triton.log under the state directory) has the details."
        ) from None
    finally:
        client.close()


def drain(repo: Path, url: str, timeout: float = DRAIN_TIMEOUT_S, quiet_s: float = DRAIN_QUIET_S) -> dict:
    """Turn ``/v2/health/ready`` false while every model keeps answering, then wait for traffic to stop.

    Readiness goes false first, so a load balancer or a client that watches it
    (``mlops.serving`` clients, a Kubernetes readiness probe) stops sending; the
    requests already on their way are still answered. Returns once no request
    has completed for ``quiet_s`` s, or after ``timeout`` s: ``{"ready": False,
    "requests": <answered while draining>, "waited_s": ...}``.
    """
    model_dir = Path(repo) / DRAIN_MODEL
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    # No such backend: the load fails at once, without starting a python stub.
    config = _repository._model_config_pb2().ModelConfig(name=DRAIN_MODEL, backend="mlops_draining", max_batch_size=0)
    write_atomic(model_dir / "config.pbtxt", _repository.render_config(config))
    t0 = time.monotonic()
    try:
        _query(url, lambda c: c.load_model(DRAIN_MODEL))
    except ServiceError:
        pass  # failing to load is the point
    ready = _http_ok(url.rstrip("/") + "/v2/health/ready")
    if ready:
        raise ServiceError(f"Triton at {url} stayed ready after the drain marker; it runs without --strict-readiness?")

    def answered() -> int:
        stats = statistics(url).get("model_stats", [])
        return sum(int(s["inference_stats"]["success"]["count"]) + int(s["inference_stats"]["fail"]["count"])
                   for s in stats)

    start = last = answered()
    quiet_since = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(_POLL_S * 2)
        now = answered()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    return {"ready": False, "requests": last - start, "waited_s": round(time.monotonic() - t0, 3)}


def unload(model_name: str, url: str) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=_host_port(url))
    try:
        client.unload_model(model_name)
    except InferenceServerException as e:
        raise ServiceError(f"Triton at {url} could not unload model {model_name!r}: {e.message()}.") from None
    finally:
        client.close()


def served_models(url: str) -> list[dict]:
    """Every model in the repository as ``{"name", "version", "state"}``; version is None until loaded."""
    index = _query(url, lambda c: c.get_model_repository_index())
    return [{"name": m["name"], "version": m.get("version"), "state": m.get("state", "UNAVAILABLE")} for m in index]


def statistics(url: str, model_name: str = "") -> dict:
    """Triton's inference statistics (counts and cumulative times), for one model or all."""
    return _query(url, lambda c: c.get_inference_statistics(model_name=model_name))


def _query(url: str, call):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=_host_port(url))
    try:
        return call(client)
    except InferenceServerException as e:
        raise ServiceError(f"Triton at {url} refused the request: {e.message()}.") from None
    except (ConnectionError, OSError) as e:
        raise ServiceError(f"Triton does not answer at {url} ({e}); is it running (`mlops status`)?") from None
    finally:
        client.close()


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _bundled_tritonserver() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the local Triton needs nvidia-pytriton: pip install 'nvidia-pytriton==0.7.0'.")
    source = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (source / "bin" / "tritonserver").exists():
        raise ServiceError(
            f"nvidia-pytriton is installed but {source / 'bin' / 'tritonserver'} is missing; reinstall it."
        )
    return source


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    site_packages = _bundled_tritonserver().parent.parent
    libs = [str(site_packages / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    # The stub finds its site-packages through `python3` on PATH; PYTHONPATH
    # alone picked up another numpy and outputs came back empty.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
