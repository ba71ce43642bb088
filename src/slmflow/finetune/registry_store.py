"""Where the adapter registry keeps its versions: files under ``$SLMFLOW_HOME`` or PostgreSQL.

Why a small storage interface under `AdapterRegistry`: the registry's decisions (next version,
the promotion gate, rollback, hot swap) are the same whatever holds the bytes; only *where* they
live changes when a team outgrows one machine. Trainers, gateways and Ray workers on several
machines must see the same versions, the same promoted pointer and the same history, without a
shared file system. So:

``FileRegistryStore`` (default): ``$SLMFLOW_HOME/adapters/<agent>/vN/`` with ``adapter/`` (PEFT),
``adapter.gguf`` and ``card.json``; ``promoted.json`` replaced atomically; ``history.jsonl``.

``PostgresRegistryStore`` (``SLMFLOW_ADAPTERS_URL=postgresql://...``): four tables
(``adapter_versions`` with the card, ``adapter_files`` with each file's bytes, ``adapter_promoted``
with a sequence number that changes on every promotion, ``adapter_history``). A version is
inserted with its files in one transaction under a per-agent advisory lock, so two trainers
registering at once get v3 and v4, never two v3s, and a crash mid-upload leaves nothing visible.
Files are immutable once registered; a machine that loads a version copies its files once into
``$SLMFLOW_HOME/cache/adapters/<database>/<agent>/vN-<checksum>/`` (written to a temporary folder,
then renamed; named by the version and its files' checksums, so a reset database never serves a
stale copy) because llama.cpp and PEFT load from paths. Cards (eval scores, lineage) are mutable and
always read from the database. Adapters of SLMs are small (3.7 MB GGUF for a 135M model at r=8;
tens of MB for 7B models), well within PostgreSQL's 1 GB per value.

Names are checked at this door too (not only by `AdapterRegistry`), and so is what a store reads
back: `slmflow.finetune.registry_checks`.

Checksums: the PostgreSQL store keeps each file's sha256 beside its bytes; the file store writes
``checksums.json`` into a version's folder at registration. ``local_dir`` verifies a version's
files against them every time it hands the folder out (a few ms for an SLM's adapter), so a file
changed on disk after registration (a corrupt copy, a tampered cache) is refused (files) or fetched
again from the database (PostgreSQL) before llama.cpp or PEFT open it. Versions registered before
checksums existed have no ``checksums.json``; their GGUF files still go through
`slmflow.models.gguf_check`.

The interface: `versions`, `card`/`write_card`, `add_version`, `promoted`/`write_promoted`,
`append_history`/`history`, `local_dir`, `stamp` (cheap; changes when the promoted pointer does)
and `lock` (one promotion decision at a time per agent, across processes).

The location is read by `slmflow.storage.urls.parse_location` and the PostgreSQL connection is
`slmflow.storage.pg.PgConnection` (the same reconnecting one as the call log's and the span
store's); `RegistryStoreError` is a `slmflow.errors.StorageError`.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..storage.migrations import ADVISORY_LOCKS, create_tables
from ..storage.pg import PgConnection
from ..storage.urls import parse_location
from .registry_checks import (_VERSION, AdapterFileError, RegistryStoreError, _check_pointer,
                              _check_rel_path, _check_state, _loads, _sha256_file, _sha256_ok,
                              _valid_agent, check_agent, check_version)

__all__ = ["RegistryStore", "FileRegistryStore", "PostgresRegistryStore", "open_registry_store",
           "ENV_ADAPTERS_URL", "RegistryStoreError", "AdapterFileError", "check_agent",
           "check_version"]

ENV_ADAPTERS_URL = "SLMFLOW_ADAPTERS_URL"
CHECKSUMS = "checksums.json"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class RegistryStore(abc.ABC):
    """The registry's storage; see the module doc."""

    location: str
    poll_s: float = 0.0  # how long a serving agent may use its pointer before asking again

    @abc.abstractmethod
    def agents(self) -> list[str]: ...

    @abc.abstractmethod
    def versions(self, agent: str) -> list[str]:
        """``["v1", "v2", ...]`` in order."""

    @abc.abstractmethod
    def card(self, agent: str, version: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def write_card(self, agent: str, version: str, card: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def add_version(self, agent: str, files: Path,
                    make_card: Callable[[str], dict[str, Any]]) -> str:
        """Store the staging folder ``files`` (``adapter/``, ``adapter.gguf``) as the next
        version, with the card ``make_card(version)``; all or nothing. The store may take the
        folder over (the file store moves it in). Returns the version."""

    @abc.abstractmethod
    def promoted(self, agent: str) -> dict[str, Any] | None:
        """``{"version", "previous", "at"}`` or None."""

    @abc.abstractmethod
    def write_promoted(self, agent: str, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def append_history(self, agent: str, entry: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def history(self, agent: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def local_dir(self, agent: str, version: str) -> Path:
        """A local folder with the version's files (a copy, for a database store)."""

    @abc.abstractmethod
    def stamp(self, agent: str) -> Any:
        """A cheap value that changes whenever the agent's promoted pointer is written."""

    @abc.abstractmethod
    def lock(self, agent: str) -> contextlib.AbstractContextManager[None]:
        """Held around one promotion decision (read the pointer, compare, write)."""

    def close(self) -> None:
        pass


# ---- files ----------------------------------------------------------------------------------------

class FileRegistryStore(RegistryStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._tlock = threading.RLock()

    def _dir(self, agent: str) -> Path:
        return self.root / check_agent(agent, where=self.location)

    def _vdir(self, agent: str, version: str) -> Path:
        return self._dir(agent) / check_version(version, where=self.location)

    def _read(self, p: Path, kind: type = dict) -> Any:
        try:
            text = p.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise RegistryStoreError(f"cannot read {p}: {e}", where=str(p)) from None
        return _loads(text, p.name, str(p), kind)

    def agents(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _valid_agent(p.name))

    def versions(self, agent: str) -> list[str]:
        d = self._dir(agent)
        if not d.is_dir():
            return []
        vs = [p.name for p in d.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(vs, key=lambda v: int(v[1:]))

    def card(self, agent: str, version: str) -> dict[str, Any] | None:
        return self._read(self._vdir(agent, version) / "card.json")

    def write_card(self, agent: str, version: str, card: dict[str, Any]) -> None:
        _write_json_atomic(self._vdir(agent, version) / "card.json", card)

    def add_version(self, agent: str, files: Path,
                    make_card: Callable[[str], dict[str, Any]]) -> str:
        d = self._dir(agent)
        d.mkdir(parents=True, exist_ok=True)
        with self._flock(agent):
            existing = self.versions(agent)
            version = f"v{int(existing[-1][1:]) + 1 if existing else 1}"
            tmp = d / f".{version}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                shutil.move(str(files), str(tmp))  # a rename when on the same file system
                sums = {p.relative_to(tmp).as_posix(): _sha256_file(p)
                        for p in sorted(tmp.rglob("*")) if p.is_file() and
                        p.relative_to(tmp).as_posix() not in (CHECKSUMS, "card.json")}
                _write_json_atomic(tmp / CHECKSUMS, sums)
                _write_json_atomic(tmp / "card.json", make_card(version))
                tmp.rename(d / version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return version

    def promoted(self, agent: str) -> dict[str, Any] | None:
        p = self._dir(agent) / "promoted.json"
        state = self._read(p)
        return None if state is None else _check_state(state, str(p))

    def write_promoted(self, agent: str, state: dict[str, Any]) -> None:
        _check_pointer(state, self.location)
        self._dir(agent).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self._dir(agent) / "promoted.json", state)

    def append_history(self, agent: str, entry: dict[str, Any]) -> None:
        self._dir(agent).mkdir(parents=True, exist_ok=True)
        with open(self._dir(agent) / "history.jsonl", "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def history(self, agent: str) -> list[dict[str, Any]]:
        p = self._dir(agent) / "history.jsonl"
        if not p.is_file():
            return []
        return [_loads(line, f"{p.name}:{i}", str(p)) for i, line in
                enumerate(p.read_text().splitlines(), 1) if line.strip()]

    def local_dir(self, agent: str, version: str) -> Path:
        d = self._vdir(agent, version)
        sums = self._read(d / CHECKSUMS)
        for rel, sha in (sums or {}).items():
            f = d / _check_rel_path(rel, str(d / CHECKSUMS))
            if not _sha256_ok(f, sha):
                raise AdapterFileError(
                    f"{agent}@{version}/{rel} is missing or does not match the checksum recorded "
                    "at registration; register the adapter again", where=str(f))
        return d

    def stamp(self, agent: str) -> Any:
        try:
            return (self._dir(agent) / "promoted.json").stat().st_mtime_ns
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _flock(self, agent: str) -> Iterator[None]:
        # threads of this process, then other processes on this machine (or on a shared file
        # system that honours flock)
        self._dir(agent).mkdir(parents=True, exist_ok=True)
        with self._tlock, open(self._dir(agent) / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def lock(self, agent: str) -> contextlib.AbstractContextManager[None]:
        return self._flock(agent)


# ---- PostgreSQL ---------------------------------------------------------------------------------

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapter_versions (
    agent TEXT NOT NULL, version INTEGER NOT NULL, card TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (agent, version));
CREATE TABLE IF NOT EXISTS adapter_files (
    agent TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, data BYTEA NOT NULL,
    sha256 TEXT NOT NULL, PRIMARY KEY (agent, version, path),
    FOREIGN KEY (agent, version) REFERENCES adapter_versions (agent, version) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS adapter_promoted (
    agent TEXT PRIMARY KEY, state TEXT NOT NULL, seq BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS adapter_history (
    id BIGSERIAL PRIMARY KEY, agent TEXT NOT NULL, entry TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS adapter_history_agent ON adapter_history (agent, id);
"""
_SCHEMA_LOCK = ADVISORY_LOCKS["adapters"]


def _agent_key(agent: str) -> int:
    """A 63-bit advisory-lock key for one agent's registry (stable across processes)."""
    return int.from_bytes(hashlib.sha256(f"slmflow-adapters:{agent}".encode()).digest()[:8],
                          "big") & 0x7FFF_FFFF_FFFF_FFFF


class PostgresRegistryStore(RegistryStore):
    """The registry in PostgreSQL (psycopg 3, one connection serialised per process)."""

    poll_s = 1.0

    def __init__(self, url: str, *, cache: str | Path | None = None,
                 connect_timeout: float = 10) -> None:
        self._db = PgConnection(url, error=RegistryStoreError, what="the adapter registry",
                                connect_timeout=connect_timeout)
        self.url, self.location = self._db.url, self._db.url_safe
        if cache is None:
            from ..home import subdir

            db = hashlib.sha256(re.sub(r"://[^@/]*@", "://", self.url).encode()).hexdigest()[:12]
            cache = subdir("cache") / "adapters" / db
        self.cache = Path(cache)
        with self._tx() as cur:
            create_tables(cur, _SCHEMA_LOCK, list(filter(str.strip, _PG_SCHEMA.split(";"))))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._db.lock:
            try:
                conn = self._db.get()
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except self._db.psycopg.Error as e:
                raise RegistryStoreError(f"adapter registry query failed: {str(e).strip()}",
                                         where=self.location) from None

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._tx() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def agents(self) -> list[str]:
        rows = self._all("SELECT DISTINCT agent FROM adapter_versions UNION "
                         "SELECT agent FROM adapter_promoted")
        return sorted(r[0] for r in rows if _valid_agent(r[0]))

    def versions(self, agent: str) -> list[str]:
        rows = self._all("SELECT version FROM adapter_versions WHERE agent = %s ORDER BY version",
                         (check_agent(agent, where=self.location),))
        return [f"v{r[0]}" for r in rows]

    def _num(self, version: str) -> int:
        return int(check_version(version, where=self.location)[1:])

    def _row(self, agent: str, version: str | None = None) -> str:
        return f"{self.location} ({agent}{'@' + version if version else ''})"

    def card(self, agent: str, version: str) -> dict[str, Any] | None:
        rows = self._all("SELECT card FROM adapter_versions WHERE agent = %s AND version = %s",
                         (check_agent(agent, where=self.location), self._num(version)))
        return _loads(rows[0][0], f"the card of {agent}@{version}",
                      self._row(agent, version)) if rows else None

    def write_card(self, agent: str, version: str, card: dict[str, Any]) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE adapter_versions SET card = %s WHERE agent = %s AND version = %s",
                        (json.dumps(card, default=str), check_agent(agent, where=self.location),
                         self._num(version)))

    def add_version(self, agent: str, files: Path,
                    make_card: Callable[[str], dict[str, Any]]) -> str:
        check_agent(agent, where=self.location)
        entries = sorted(p for p in Path(files).rglob("*") if p.is_file() and p.name != CHECKSUMS)
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_agent_key(agent),))
            cur.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM adapter_versions "
                        "WHERE agent = %s", (agent,))
            n = int(cur.fetchone()[0])
            version = f"v{n}"
            cur.execute("INSERT INTO adapter_versions (agent, version, card, registered_at) "
                        "VALUES (%s, %s, %s, %s)",
                        (agent, n, json.dumps(make_card(version), default=str), time.time()))
            for p in entries:
                data = p.read_bytes()
                cur.execute("INSERT INTO adapter_files (agent, version, path, data, sha256) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            (agent, n, p.relative_to(files).as_posix(), data,
                             hashlib.sha256(data).hexdigest()))
        return version

    def promoted(self, agent: str) -> dict[str, Any] | None:
        rows = self._all("SELECT state FROM adapter_promoted WHERE agent = %s",
                         (check_agent(agent, where=self.location),))
        if not rows:
            return None
        where = f"{self._row(agent)}: adapter_promoted"
        return _check_state(_loads(rows[0][0], "the promoted pointer", where), where)

    def write_promoted(self, agent: str, state: dict[str, Any]) -> None:
        check_agent(agent, where=self.location)
        _check_pointer(state, self.location)
        with self._tx() as cur:
            cur.execute("INSERT INTO adapter_promoted (agent, state, seq) VALUES (%s, %s, 1) "
                        "ON CONFLICT (agent) DO UPDATE SET state = EXCLUDED.state, "
                        "seq = adapter_promoted.seq + 1", (agent, json.dumps(state, default=str)))

    def append_history(self, agent: str, entry: dict[str, Any]) -> None:
        check_agent(agent, where=self.location)
        with self._tx() as cur:
            cur.execute("INSERT INTO adapter_history (agent, entry, at) VALUES (%s, %s, %s)",
                        (agent, json.dumps(entry, default=str), time.time()))

    def history(self, agent: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT id, entry FROM adapter_history WHERE agent = %s ORDER BY id",
                         (check_agent(agent, where=self.location),))
        return [_loads(e, f"history entry {i}", f"{self._row(agent)}: adapter_history")
                for i, e in rows]

    def local_dir(self, agent: str, version: str) -> Path:
        # The copy is named by the version *and* its files' checksums: a database that was
        # reset and refilled (or another registry at the same URL) reuses version names, and a
        # stale copy must never be served for them.
        listing = self._all("SELECT path, sha256 FROM adapter_files WHERE agent = %s AND "
                            "version = %s ORDER BY path",
                            (check_agent(agent, where=self.location), self._num(version)))
        for p, _ in listing:
            _check_rel_path(p, f"{self._row(agent, version)}: adapter_files")
        digest = hashlib.sha256("\n".join(f"{p}:{h}" for p, h in listing).encode()).hexdigest()
        d = self.cache / agent / f"{version}-{digest[:16]}"
        if (d / ".complete").is_file():
            if all(_sha256_ok(d / p, h) for p, h in listing):
                return d
            # the machine's copy changed since it was made (a bad disk, a hand edit): set it
            # aside and copy the verified bytes from the database again
            aside = d.with_name(f".{d.name}.{os.getpid()}.{threading.get_ident()}.stale")
            with contextlib.suppress(OSError):
                d.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        rows = self._all("SELECT path, data, sha256 FROM adapter_files WHERE agent = %s AND "
                         "version = %s ORDER BY path", (agent, self._num(version)))
        tmp = d.with_name(f".{version}.{os.getpid()}.{threading.get_ident()}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for path, data, sha in rows:
                data = bytes(data)
                if hashlib.sha256(data).hexdigest() != sha:
                    raise AdapterFileError(f"{agent}@{version}/{path}: stored bytes do not "
                                           "match their checksum", where=self.location)
                out = tmp / _check_rel_path(path, f"{self._row(agent, version)}: adapter_files")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
            card = self.card(agent, version)
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "card.json").write_text(json.dumps(card or {}, indent=2, default=str))
            (tmp / ".complete").write_text(str(len(rows)))
            try:
                tmp.rename(d)
            except OSError:
                # another process materialised it first: keep theirs
                if not (d / ".complete").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return d

    def stamp(self, agent: str) -> Any:
        rows = self._all("SELECT seq FROM adapter_promoted WHERE agent = %s",
                         (check_agent(agent, where=self.location),))
        return rows[0][0] if rows else None

    @contextlib.contextmanager
    def lock(self, agent: str) -> Iterator[None]:
        # a session-level advisory lock on this process's connection, plus the connection's own
        # lock so that other threads' queries wait too
        check_agent(agent, where=self.location)
        with self._db.lock:
            with self._tx() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (_agent_key(agent),))
            try:
                yield
            finally:
                with self._tx() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (_agent_key(agent),))

    def close(self) -> None:
        self._db.close()


def open_registry_store(location: str | Path | None = None) -> RegistryStore:
    """``postgresql://...`` → PostgreSQL; a path (default ``$SLMFLOW_ADAPTERS_URL`` or
    ``$SLMFLOW_HOME/adapters``) → files."""
    if location is None:
        location = os.environ.get(ENV_ADAPTERS_URL) or None
    if location is None:
        from ..home import subdir

        return FileRegistryStore(subdir("adapters"))
    kind, where = parse_location(location, what="adapter registry", where="adapters")
    if kind == "postgresql":
        return PostgresRegistryStore(where)
    return FileRegistryStore(where)
