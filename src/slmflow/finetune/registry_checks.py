"""What the adapter registry's stores check at their door: the names they are given and what they
read back; and the errors they raise.

Names are checked by the stores, not only by `AdapterRegistry` (issue 15: a version named
``../../outside`` was read, promoted and had its card rewritten outside the registry): an agent
is 1-128 characters of ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``, without ``..``; a
version is ``v1``, ``v2``, ... (the only names either store creates). What a store reads back is
checked the same way: a promoted pointer naming ``../x``, a file path in ``adapter_files`` leaving
the version's folder, a truncated ``card.json`` or ``promoted.json`` are one `RegistryStoreError`
naming the file (or the database row), never a path outside the registry or a traceback.

Why a module of its own: the two stores (`slmflow.finetune.registry_store`) and the registry
above them (`slmflow.finetune.registry`) all apply these checks, and checking is a job apart from
storing; the public names (the errors, `check_agent`, `check_version`) are still importable from
`registry_store`, where they were before.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError, StorageError

__all__ = ["RegistryStoreError", "AdapterFileError", "check_agent", "check_version"]

_VERSION = re.compile(r"v([0-9]{1,9})")
_AGENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class RegistryStoreError(StorageError):
    """The registry's storage failed (database unreachable, a query refused) or holds something
    it never writes (a truncated card, a pointer to an invalid version, a changed file)."""


class AdapterFileError(RegistryStoreError, ModelLoadError):
    """A version's file does not match the checksum recorded at registration (a model that
    cannot be loaded, for whoever serves it: the gateway answers 503, not 500)."""


def _valid_agent(agent: Any) -> bool:
    return isinstance(agent, str) and bool(_AGENT.fullmatch(agent)) and ".." not in agent


def check_agent(agent: Any, where: str = "adapters") -> str:
    """``agent`` if it is a valid agent name (see the module doc), else a `ConfigError`."""
    if not _valid_agent(agent):
        raise ConfigError(f"invalid agent name {agent!r}: 1-128 characters of A-Z a-z 0-9 . _ -, "
                          "not starting with '.' or '-', without '..'", where=where)
    return agent


def check_version(version: Any, where: str = "adapters") -> str:
    """``version`` if it is ``v1``, ``v2``, ..., else a `ConfigError`."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ConfigError(f"invalid version {version!r}: versions are v1, v2, ...", where=where)
    return version


def _check_state(state: Any, where: str) -> dict[str, Any]:
    """A promoted pointer read back from the store: a dict naming valid versions."""
    if not isinstance(state, dict):
        raise RegistryStoreError(f"the promoted pointer is not an object: {state!r:.80}",
                                 where=where)
    for k in ("version", "previous"):
        v = state.get(k)
        if (k == "version" or v is not None) and \
                (not isinstance(v, str) or not _VERSION.fullmatch(v)):
            raise RegistryStoreError(f"the promoted pointer names an invalid {k} {v!r:.80} "
                                     "(versions are v1, v2, ...)", where=where)
    return state


def _loads(text: str, what: str, where: str, kind: type = dict) -> Any:
    """json.loads for what a store reads back: one `RegistryStoreError` naming the file."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RegistryStoreError(f"{what} is not valid JSON ({e}); was it truncated?",
                                 where=where) from None
    if not isinstance(data, kind):
        raise RegistryStoreError(f"{what} holds a {type(data).__name__}, not a JSON "
                                 f"{'object' if kind is dict else kind.__name__}", where=where)
    return data


def _check_rel_path(path: Any, where: str) -> str:
    """A file path inside a version's folder (``adapter.gguf``, ``adapter/x.json``)."""
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise RegistryStoreError(f"invalid file path {path!r:.120} in the registry (a path must "
                                 "stay inside its version's folder)", where=where)
    return path


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_pointer(state: dict[str, Any], where: str) -> None:
    """A pointer about to be written names valid versions (a `ConfigError` otherwise)."""
    check_version(state.get("version"), where=where)
    if state.get("previous") is not None:
        check_version(state["previous"], where=where)


def _sha256_ok(p: Path, sha: str) -> bool:
    try:
        return _sha256_file(p) == sha
    except OSError:
        return False
