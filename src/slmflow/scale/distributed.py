"""Batch work as Ray tasks: `ray_map(fn, items, address=...)`, the one primitive the eval runner,
batch inference over the call log and (later) the flagging job share.

Why one small map and not Ray Data pipelines: every batch job slmflow has is "the same function
over many independent rows, results in input order": eval cases, logged calls to re-run, records
to flag. A map over contiguous batches keeps the order (so results are comparable row for row
with the single-process run), lets each worker load its model once (`worker_cache`), and runs the
exact same function in-process when no cluster is given (``address=None``), which is what the
tests compare against. Ray Data would add a dataset abstraction these jobs do not need.

Where code comes from on the workers: slmflow itself must be installed on every node (same
version); the driver's import path (``sys.path`` entries outside site-packages, e.g. an example's
folder) is passed as ``PYTHONPATH`` in the job's runtime environment, which is enough on one
machine or a cluster with a shared file system; otherwise pass ``runtime_env={"working_dir":
...}``. ``SLMFLOW_*``, ``HF_*``, ``TRANSFORMERS_*``, ``OTEL_*`` and ``OPENAI_*`` variables travel
with the job (in its runtime environment, which the cluster stores), so workers use the same home,
call log, tracing, offline settings and server keys as the driver.

Ray is optional (``pip install slmflow[scale]``); without it, ``address=None`` still works.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

from ..errors import BackendUnavailableError, ConfigError

__all__ = ["ray_map", "worker_cache", "batches", "RayStats", "connect", "resolve_address",
           "LocalCluster", "ENV_ADDRESS"]

T = TypeVar("T")
R = TypeVar("R")
ENV_ADDRESS = "SLMFLOW_RAY_ADDRESS"
_ENV_PREFIXES = ("SLMFLOW_", "HF_", "TRANSFORMERS_", "OTEL_", "OPENAI_")

# ---- per-process state on a worker ---------------------------------------------------------------

_CACHE: dict[Any, Any] = {}
_CACHE_LOCK = threading.Lock()


def worker_cache(key: Any, factory: Callable[[], T]) -> T:
    """A value built once per process (a loaded model, an agent): Ray reuses worker processes
    across tasks of a job, so the second batch on a worker skips the load."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = factory()
        return _CACHE[key]


def batches(items: Sequence[T], batch_size: int) -> list[list[T]]:
    """Contiguous chunks of ``batch_size`` (the last one shorter), in order."""
    n = max(1, int(batch_size))
    return [list(items[i:i + n]) for i in range(0, len(items), n)]


@dataclass
class RayStats:
    """What a map did: where, how many tasks and workers, and its wall time."""

    address: str | None
    batches: int = 0
    items: int = 0
    workers: int | None = None
    wall_s: float = 0.0
    cluster_cpus: float | None = None
    pids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "batches": self.batches, "items": self.items,
                "workers": self.workers, "wall_s": self.wall_s,
                "cluster_cpus": self.cluster_cpus, "worker_processes": len(set(self.pids))}


# ---- connecting ----------------------------------------------------------------------------------

def _driver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    site = ("site-packages", "dist-packages", "/lib/python")
    paths = [p for p in sys.path if p and os.path.isdir(p) and not any(s in p for s in site)]
    old = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
        [os.path.abspath(p) for p in paths] + ([old] if old else [])))
    return env


def connect(address: str | None = None, *, runtime_env: dict[str, Any] | None = None) -> bool:
    """Connect this process to a Ray cluster (``host:port``, ``ray://host:10001``, ``auto``, or
    ``local`` for a throwaway single-machine cluster). Returns True if this call connected (the
    caller then disconnects), False if the process was already connected."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("Ray is not installed: pip install 'slmflow[scale]'",
                                      where="ray") from None
    if ray.is_initialized():
        return False
    env = dict(runtime_env or {})
    env_vars = {**_driver_env(), **(env.get("env_vars") or {})}
    env["env_vars"] = env_vars
    # Ray swaps 127.0.0.1 for the host's address unless told this is not a multi-node set-up;
    # for a loopback cluster keep every connection on loopback.
    if address and address.split("://")[-1].startswith(("127.0.0.1", "localhost")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at import time: ray may be imported
    _probe(address)
    kw: dict[str, Any] = {"runtime_env": env, "log_to_driver": False,
                          "ignore_reinit_error": True, "namespace": "slmflow"}
    try:
        if address in (None, "", "local"):
            ray.init(**kw, include_dashboard=False)
        else:
            ray.init(address=address, **kw)
    except ConnectionError as e:
        raise ConfigError(f"cannot connect to the Ray cluster: {e}", where=str(address)) \
            from None
    return True


def _probe(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) where nothing listens: ray.init
    itself retries such an address for minutes before giving up."""
    if address in (None, "", "local", "auto"):
        return
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray reads it (and says what is wrong with it)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {e} (is it "
                          "running? `ray start --head` prints its address)", where="ray") \
            from None


def resolve_address(address: str | None) -> str | None:
    """``env`` → ``$SLMFLOW_RAY_ADDRESS`` (None when unset: run in this process); else as given."""
    if address == "env":
        address = os.environ.get(ENV_ADDRESS) or None
    return address


# ---- the map -------------------------------------------------------------------------------------

def _call_batch(fn: Callable[..., Any], batch: list[Any], batched: bool) -> tuple[list[Any], int]:
    out = fn(batch) if batched else [fn(x) for x in batch]
    out = list(out)
    if len(out) != len(batch):
        raise ConfigError(f"a batched function returned {len(out)} results for {len(batch)} "
                          "items", where=getattr(fn, "__name__", "ray_map"))
    return out, os.getpid()


def ray_map(fn: Callable[[Any], Any], items: Iterable[Any], *, address: str | None = None,
            batch_size: int = 16, workers: int | None = None, num_cpus: float = 1,
            batched: bool = False, runtime_env: dict[str, Any] | None = None,
            stats: RayStats | None = None,
            on_batch: Callable[[int, list[Any]], None] | None = None) -> list[Any]:
    """``fn`` over ``items``, results in input order.

    address: None runs in this process, batch after batch (the single-process reference);
        ``env`` reads ``$SLMFLOW_RAY_ADDRESS``; anything else is a Ray address (see `connect`).
    batch_size: items per Ray task. workers: at most this many tasks in flight (default: as
        many as the cluster's CPUs allow, each task taking ``num_cpus``).
    batched: ``fn`` takes a list of items and returns a list of results (one per item), e.g.
        an eval suite over a batch of cases with its own concurrency.
    on_batch: called on the driver with (batch index, results) as each batch finishes.
    Exceptions raised by ``fn`` propagate (as Ray's ``RayTaskError`` wrapping the original)."""
    data = list(items)
    address = resolve_address(address)
    st = stats if stats is not None else RayStats(address)
    st.address, st.items = address, len(data)
    chunks = batches(data, batch_size)
    st.batches = len(chunks)
    t0 = time.perf_counter()
    results: list[list[Any] | None] = [None] * len(chunks)
    if address is None:
        for i, chunk in enumerate(chunks):
            results[i], pid = _call_batch(fn, chunk, batched)
            st.pids.append(pid)
            if on_batch:
                on_batch(i, results[i])  # type: ignore[arg-type]
        st.workers, st.wall_s = 1, time.perf_counter() - t0
        return [r for part in results for r in (part or [])]

    import ray

    connected = connect(address, runtime_env=runtime_env)
    try:
        st.cluster_cpus = float(ray.cluster_resources().get("CPU", 0)) or None
        limit = workers or max(1, int((st.cluster_cpus or 1) // max(num_cpus, 1e-9)))
        st.workers = limit
        remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_call_batch)
        fn_ref = ray.put(fn)
        pending: dict[Any, int] = {}
        nxt = 0
        while nxt < len(chunks) or pending:
            while nxt < len(chunks) and len(pending) < limit:
                pending[remote.remote(fn_ref, chunks[nxt], batched)] = nxt
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                results[i], pid = ray.get(ref)
                st.pids.append(pid)
                if on_batch:
                    on_batch(i, results[i])  # type: ignore[arg-type]
    finally:
        st.wall_s = time.perf_counter() - t0
        if connected:
            ray.shutdown()
    return [r for part in results for r in (part or [])]


# ---- a throwaway local cluster (tests, benchmarks) ------------------------------------------------

class LocalCluster:
    """``ray start --head`` on loopback with its own temp dir, stopped by process id.

    Why not ``ray stop``: it stops every Ray process of the user on the machine, including other
    people's clusters. This stops only the processes whose command line names this cluster's
    temp dir or GCS address, and their children (Linux ``/proc``)."""

    def __init__(self, num_cpus: int = 2, *, temp_dir: str | None = None,
                 object_store_mb: int = 256, python: str | None = None) -> None:
        import tempfile

        self.num_cpus = num_cpus
        # Ray's socket paths must stay short (AF_UNIX limit): a short temp dir of our own
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="slmray-", dir="/tmp")
        self.object_store_mb = object_store_mb
        self.python = python or sys.executable
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def _free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def start(self) -> "LocalCluster":
        import subprocess

        ray_bin = os.path.join(os.path.dirname(self.python), "ray")
        cmd = [ray_bin if os.path.exists(ray_bin) else "ray", "start", "--head",
               "--num-cpus", str(self.num_cpus), "--node-ip-address", "127.0.0.1",
               "--include-dashboard=false", "--disable-usage-stats",
               "--temp-dir", self.temp_dir,
               "--object-store-memory", str(self.object_store_mb * 1024 * 1024)]
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        last = ""
        for _ in range(3):  # a port taken between picking and binding: pick again
            self.port = self._free_port()
            client = self._free_port()
            r = subprocess.run(cmd + ["--port", str(self.port),
                                      "--ray-client-server-port", str(client),
                                      "--dashboard-agent-listen-port", str(self._free_port()),
                                      # even without a dashboard its head process binds a port:
                                      # a free one, so two clusters can run side by side
                                      "--dashboard-port", str(self._free_port()),
                                      "--dashboard-host", "127.0.0.1"],
                               capture_output=True, text=True, env=env, timeout=180)
            if r.returncode == 0:
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                return self
            last = (r.stdout + r.stderr)[-2000:]
            self.stop()
        raise ConfigError(f"ray start failed: {last}", where="ray start")

    def _pids(self) -> list[int]:
        marks = [self.temp_dir] + ([f"127.0.0.1:{self.port}"] if self.port else [])
        me = os.getpid()
        procs: dict[int, int] = {}
        hits: set[int] = set()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
                with open(f"/proc/{d}/stat") as f:
                    procs[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if pid != me and any(m in cmd for m in marks) and "slmray-stop" not in cmd:
                hits.add(pid)
        changed = True
        while changed:  # add descendants
            changed = False
            for pid, ppid in procs.items():
                if ppid in hits and pid not in hits and pid != me:
                    hits.add(pid)
                    changed = True
        return sorted(hits)

    def stop(self, timeout: float = 15.0) -> None:
        import signal

        pids = self._pids()
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + wait
            while time.time() < deadline:
                pids = [p for p in pids if _alive(p)]
                if not pids:
                    break
                time.sleep(0.2)
            if not pids:
                break
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except OSError:
        return False
