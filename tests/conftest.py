"""Test set-up: no network beyond loopback, a private SLMFLOW_HOME, shared real-model fixtures."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _is_loopback(address) -> bool:
    if isinstance(address, tuple):
        host = address[0]
    else:
        return True  # unix sockets
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: would need DNS, i.e. the network


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may not reach the network: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may not reach the network: {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def slmflow_home(tmp_path_factory):
    home = os.environ.get("SLMFLOW_TEST_HOME") or str(tmp_path_factory.mktemp("slmflow-home"))
    os.environ["SLMFLOW_HOME"] = home
    os.environ.setdefault("SLMFLOW_TRACING", "off")
    return home


@pytest.fixture(scope="session")
def smollm(slmflow_home):
    """The embedded SmolLM2-135M on llama.cpp, loaded once for the session."""
    from slmflow.models.catalog import resolve

    return resolve("smollm2-135m").load()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a real PostgreSQL server on loopback (call log, review queue) --------------------------------

def _pg_bin():
    import glob
    import shutil
    from pathlib import Path

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    w = shutil.which("initdb")
    return Path(w).parent if w else None


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory):
    """A throwaway PostgreSQL cluster on 127.0.0.1 (run as 'postgres' when we are root)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install slmflow[store])")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
                    "run .ci/install-system-deps.sh as root")
    as_user: list[str] = []
    # not under pytest's basetemp: pytest deletes all but the newest three basetemps, so a second
    # pytest session started meanwhile would delete this server's data directory under it
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="slmflow-test-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server "
                        "(run .ci/install-system-deps.sh)")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(base, 0o777)
        for parent in list(base.parents)[:3]:
            try:
                os.chmod(parent, os.stat(parent).st_mode | 0o711)
            except OSError:
                pass
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data = base / "data"
    r = subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "slm",
                                  "--auth=trust", "-E", "UTF8", "--no-sync"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"initdb failed: {r.stderr[-2000:]}")
    port = free_port()
    logf = base / "pg.log"
    r = subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logf), "-w",
                                  "-t", "60", "-o",
                                  f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off "
                                  "-c full_page_writes=off", "start"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"pg_ctl start failed: {r.stderr[-1000:]} "
                    f"{logf.read_text()[-2000:] if logf.exists() else ''}")
    import psycopg

    with psycopg.connect(f"postgresql://slm@127.0.0.1:{port}/postgres", autocommit=True) as c:
        c.execute("CREATE DATABASE slmflow")
    yield f"postgresql://slm@127.0.0.1:{port}/slmflow"
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                              "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)



def reset_pg(url: str) -> None:
    """Drop everything in the test database (each test starts from an empty schema)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DROP SCHEMA public CASCADE")
        c.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def call_log(request, tmp_path):
    """A fresh call log on embedded SQLite, then on the real PostgreSQL server."""
    from slmflow.store import open_call_log

    if request.param == "sqlite":
        log = open_call_log(f"sqlite:///{tmp_path / 'calls.db'}")
    else:
        url = request.getfixturevalue("pg_url")
        reset_pg(url)
        log = open_call_log(url)
    yield log
    log.close()


def wait_http(url: str, proc, log, timeout: float = 120) -> None:
    """Wait until ``url`` answers 200; fail with the server's log if it exits or never does."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"server at {url} did not start within {timeout:g} s")


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster (`ray start --head` on loopback, 2 CPUs, its own temp folder),
    stopped by process id afterwards; fails if any of its processes is left running."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install slmflow[scale])")
    from slmflow.scale.distributed import LocalCluster

    c = LocalCluster(num_cpus=2).start()
    try:
        yield c
    finally:
        pids = c._pids()
        c.stop()
        left = [p for p in pids if os.path.exists(f"/proc/{p}") and
                open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        assert not left, f"Ray processes left running: {left}"
