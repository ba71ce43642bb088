"""Check a GGUF file (a model or a LoRA adapter) in pure Python before llama.cpp opens it.

Why: llama.cpp trusts the files it is given, and llama-cpp-python 0.3.x does not notice when
llama.cpp refuses a LoRA adapter (``llama_adapter_lora_init`` returns a NULL pointer, which the
binding compares with ``None``): the NULL adapter is attached to the context and the first
generation dereferences it. So a corrupt ``adapter.gguf`` in the registry (random bytes, a
truncated copy, a header with a bogus tensor count or data offset), or an adapter trained on
another architecture, took ``slmflow serve`` down with SIGSEGV (rc 139) at the first request to
that agent (issue 15). A crash in C cannot be caught, so nothing llama.cpp would refuse may reach
it: `check_gguf_files` reads the file's structure here and raises a `ModelLoadError` naming the
file and the reason; the agent answers that error and the server stays up.

What `read_gguf` checks (the rules of llama.cpp's ``gguf.cpp``):
- magic ``GGUF``, version 2 or 3 (v1 is no longer read by llama.cpp), little-endian;
- the tensor and key/value counts, each bounded by what the rest of the file could hold (so a
  count of 2^40 is refused before anything is allocated) and by a hard cap;
- every key/value readable inside the file: known value types, strings and arrays within the
  file, no nested arrays, no duplicate keys, ``general.alignment`` a power of two (u32);
- every tensor info readable: name shorter than 64 bytes and unique, 1-4 dimensions, no negative
  or overflowing dimension, a known ggml type whose block size divides the first dimension;
- tensor data: each offset aligned, inside the data section, the tensor's bytes inside the file,
  and no two tensors overlapping.
Reading is bounded in time and memory whatever the file says: it is memory-mapped, never read
whole; numeric arrays are skipped in one step and string arrays walked over their lengths, not
built (SmolLM2's 49k-token vocabulary and its merges: 50 ms on a loaded 2-core machine), at most
8M strings in all; at most 64k tensors and 64k keys, only strings up to 1 KiB kept. The answer is
cached per (path, size, mtime, inode), so swapping adapters on one base does not re-read the base.

What `check_gguf_files` adds for a LoRA adapter on a model (llama.cpp's ``llama-adapter.cpp``
refuses these too, and the binding turns the refusal into the crash above):
``general.type`` is ``adapter``, ``adapter.type`` is ``lora``, ``adapter.lora.alpha`` a float32,
``general.architecture`` the model's; every tensor is ``<base>.lora_a``/``.lora_b`` (norms are
skipped as llama.cpp does) in complete pairs, each base tensor exists in the model with
``a.ne[0] == W.ne[0]``, ``b.ne[1] == W.ne[1]``, ``a.ne[1] == b.ne[0]``.

`LlamaCppModel` calls `check_gguf_files` when it is built, and after llama.cpp has loaded it
refuses an adapter that came back NULL anyway (a second line, for whatever this module misses).

Not checked: the values of the weights (NaNs load and generate nonsense, they do not crash), and
tokenizer metadata of a model file beyond its structure. Checksums are the registry's business:
the store verifies a version's files against the sha256 it recorded at registration before they
reach this module (`slmflow.finetune.registry_store`).
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

__all__ = ["GGUFInfo", "TensorInfo", "read_gguf", "check_gguf_files", "check_lora_matches"]

MAGIC = b"GGUF"
MAX_TENSORS = 1 << 16      # a 405B-parameter model has ~1.1k tensors, MoE files a few thousand
MAX_KV = 1 << 16           # real files carry tens of keys
MAX_STRINGS = 1 << 23      # strings in all arrays together (a 262k vocabulary + its merges)
MAX_NAME = 64              # GGML_MAX_NAME: llama.cpp refuses a tensor name of 64 bytes or more
MAX_DIMS = 4               # GGML_MAX_DIMS
MAX_KEPT_STRING = 1 << 10  # string values longer than this are checked, not kept
_INT64_MAX = (1 << 63) - 1

# GGUF value types: (struct format, size) for the fixed-size ones
_STRING, _ARRAY = 8, 9
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32",
               6: "float32", 7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64",
               12: "float64"}

# ggml tensor types: (block size in elements, bytes per block), as ggml.c's type traits
_QK = 256
_GGML_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (_QK, 84), 11: (_QK, 110), 12: (_QK, 144), 13: (_QK, 176), 14: (_QK, 210),
    15: (_QK, 292), 16: (_QK, 66), 17: (_QK, 74), 18: (_QK, 98), 19: (_QK, 50), 20: (32, 18),
    21: (_QK, 110), 22: (_QK, 82), 23: (_QK, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (_QK, 56), 30: (1, 2), 34: (_QK, 54), 35: (_QK, 66),
    39: (32, 17)}


def _type_size(t: int) -> tuple[int, int] | None:
    if t in _GGML_SIZES:
        return _GGML_SIZES[t]
    try:  # a type newer than this table: the gguf package tracks llama.cpp's list
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        return tuple(GGML_QUANT_SIZES[GGMLQuantizationType(t)])  # type: ignore[return-value]
    except Exception:
        return None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] (the row length) first
    type: int
    offset: int             # relative to the data section
    nbytes: int


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]          # scalars and strings; an array as ("array", type, count)
    value_types: dict[str, int]       # key -> GGUF value type
    tensors: dict[str, TensorInfo] = field(repr=False)

    @property
    def architecture(self) -> str | None:
        a = self.metadata.get("general.architecture")
        return a if isinstance(a, str) else None


class _Bad(Exception):
    """A structural fault; `read_gguf` turns it into a ModelLoadError naming the file."""


class _Reader:
    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0
        self.strings = 0  # array strings walked so far (the one loop a file's length allows)

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        if n < 0 or n > self.left():
            raise _Bad(f"{what} runs past the end of the file (needs {n} bytes at offset "
                       f"{self.pos}, {self.left()} left)")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        return struct.unpack_from(fmt, self.buf, self.take(n, what))[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str, keep: bool = True) -> str | None:
        n = self.u64(f"the length of {what}")
        start = self.take(n, f"{what} ({n} bytes)")
        if not keep or n > MAX_KEPT_STRING:
            return None
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} is not UTF-8") from None


def _read_value(r: _Reader, vtype: int, what: str) -> Any:
    if vtype in _SCALARS:
        fmt, n = _SCALARS[vtype]
        return r.unpack(fmt, n, what)
    if vtype == _STRING:
        return r.string(what)
    if vtype == _ARRAY:
        etype = r.u32(f"the element type of {what}")
        count = r.u64(f"the length of {what}")
        if etype == _ARRAY:
            raise _Bad(f"{what} is an array of arrays (not supported by llama.cpp)")
        if etype in _SCALARS:
            n = _SCALARS[etype][1]
            if count > r.left() // n:
                raise _Bad(f"{what} claims {count} elements, more than the file holds")
            r.take(count * n, what)
        elif etype == _STRING:
            if count > r.left() // 8:  # every string has at least its 8-byte length
                raise _Bad(f"{what} claims {count} strings, more than the file holds")
            r.strings += count
            if r.strings > MAX_STRINGS:
                raise _Bad(f"{what}: more than {MAX_STRINGS} strings in arrays")
            # the one long loop (a vocabulary): lengths only, locals only
            pos, buf, size, unpack = r.pos, r.buf, r.size, struct.unpack_from
            for i in range(count):
                start = pos
                if pos + 8 > size or (pos := pos + 8 + unpack("<Q", buf, pos)[0]) > size:
                    raise _Bad(f"{what}[{i}] runs past the end of the file (at offset {start})")
            r.pos = pos
        else:
            raise _Bad(f"{what} has unknown element type {etype}")
        return ("array", etype, count)
    raise _Bad(f"{what} has unknown value type {vtype}")


def _parse(buf: Any, size: int) -> tuple[int, int, int, dict, dict, dict]:
    r = _Reader(buf, size)
    if size < 4 or bytes(buf[:4]) != MAGIC:
        raise _Bad("its first bytes are not 'GGUF'")
    r.pos = 4
    version = r.u32("the version")
    if version == 1:
        raise _Bad("GGUF version 1 is no longer supported by llama.cpp")
    if version & 0xFFFF == 0 and version:
        raise _Bad(f"GGUF version {version:#x} looks big-endian; llama.cpp reads little-endian")
    if version not in (2, 3):
        raise _Bad(f"unsupported GGUF version {version} (2 or 3 expected)")
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the key/value count")
    # every key/value takes at least 8 (key length) + 1 + 4 (type) + 1 bytes, every tensor info
    # 8 (name length) + 1 + 4 (n_dims) + 8 (one dimension) + 4 (type) + 8 (offset) bytes
    if n_kv > MAX_KV or n_kv * 14 > r.left():
        raise _Bad(f"bogus key/value count {n_kv} (the file has {size} bytes)")
    if n_tensors > MAX_TENSORS or n_tensors * 33 > r.left():
        raise _Bad(f"bogus tensor count {n_tensors} (the file has {size} bytes)")
    metadata: dict[str, Any] = {}
    types: dict[str, int] = {}
    for i in range(n_kv):
        key = r.string(f"key #{i}")
        if not key:
            raise _Bad(f"key #{i} is empty or too long")
        if key in metadata:
            raise _Bad(f"duplicate key {key!r}")
        vtype = r.u32(f"the value type of {key!r}")
        metadata[key] = _read_value(r, vtype, f"the value of {key!r}")
        types[key] = vtype
    alignment = 32
    if "general.alignment" in metadata:
        alignment = metadata["general.alignment"]
        if types["general.alignment"] != 4 or alignment == 0 or alignment & (alignment - 1):
            raise _Bad(f"general.alignment must be a power of two (uint32), got {alignment!r}")
    tensors: dict[str, TensorInfo] = {}
    for i in range(n_tensors):
        name = r.string(f"the name of tensor #{i}")
        if name is None or not name or len(name.encode()) >= MAX_NAME:
            raise _Bad(f"tensor #{i} has an empty or too long name (limit {MAX_NAME - 1} bytes)")
        if name in tensors:
            raise _Bad(f"duplicate tensor {name!r}")
        n_dims = r.u32(f"the dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(r.u64(f"dimension {j} of {name!r}") for j in range(n_dims))
        n = 1
        for d in shape:
            if d > _INT64_MAX:
                raise _Bad(f"tensor {name!r} has a negative dimension {shape}")
            n *= d
        if n > _INT64_MAX:
            raise _Bad(f"tensor {name!r} has {n} elements, overflowing int64 {shape}")
        ttype = r.u32(f"the type of {name!r}")
        ts = _type_size(ttype)
        if ts is None:
            raise _Bad(f"tensor {name!r} has unknown ggml type {ttype}")
        block, bsize = ts
        if shape[0] % block:
            raise _Bad(f"tensor {name!r}: row length {shape[0]} is not a multiple of the block "
                       f"size {block} of its type {ttype}")
        offset = r.u64(f"the data offset of {name!r}")
        tensors[name] = TensorInfo(name, shape, ttype, offset, n // block * bsize)
    data_offset = -(-r.pos // alignment) * alignment
    data_size = size - data_offset
    end = 0
    for t in sorted(tensors.values(), key=lambda t: t.offset):
        if t.offset % alignment:
            raise _Bad(f"tensor {t.name!r}: data offset {t.offset} is not a multiple of the "
                       f"alignment {alignment}")
        if t.offset < end:
            raise _Bad(f"tensor {t.name!r}: data at offset {t.offset} overlaps another tensor")
        if t.offset > data_size or t.nbytes > data_size - t.offset:
            raise _Bad(f"tensor {t.name!r}: {t.nbytes} bytes at data offset {t.offset} lie past "
                       f"the end of the file (data section holds {max(data_size, 0)} bytes; "
                       "truncated?)")
        end = t.offset + t.nbytes
    return version, alignment, data_offset, metadata, types, tensors


_CACHE: dict[tuple, GGUFInfo] = {}
_CACHE_LOCK = threading.Lock()


def read_gguf(path: str | Path) -> GGUFInfo:
    """The structure of a GGUF file, checked (see the module doc); a `ModelLoadError` naming
    the file and the fault otherwise."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError as e:
        raise ModelLoadError(f"cannot read GGUF file {p}: {e.strerror}", where=str(p)) from None
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise _Bad("the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                parsed = _parse(buf, size)
    except _Bad as e:
        raise ModelLoadError(f"{p} is not a valid GGUF file: {e}", where=str(p)) from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read GGUF file {p}: {e}", where=str(p)) from None
    info = GGUFInfo(p, *parsed)
    with _CACHE_LOCK:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = info
    return info


_LORA_SUFFIXES = (".lora_a", ".lora_b")


def check_lora_matches(model: GGUFInfo, lora: GGUFInfo) -> None:
    """Refuse an adapter llama.cpp would refuse on this model (see the module doc)."""
    def bad(reason: str) -> ModelLoadError:
        return ModelLoadError(f"LoRA adapter {lora.path} cannot be used on {model.path.name}: "
                              f"{reason}", where=str(lora.path))

    for key in ("general.type", "general.architecture", "adapter.type"):
        if key in lora.value_types and lora.value_types[key] != _STRING:
            raise bad(f"{key} is a {_TYPE_NAMES.get(lora.value_types[key])}, not a string")
    if "adapter.lora.alpha" in lora.value_types and lora.value_types["adapter.lora.alpha"] != 6:
        raise bad("adapter.lora.alpha is not a float32")
    if lora.metadata.get("general.type") != "adapter":
        raise bad(f"general.type is {lora.metadata.get('general.type')!r}, not 'adapter' "
                  "(a model file given as an adapter?)")
    if lora.metadata.get("adapter.type") != "lora":
        raise bad(f"adapter.type is {lora.metadata.get('adapter.type')!r}, not 'lora'")
    if lora.architecture != model.architecture:
        raise bad(f"the adapter is for architecture {lora.architecture!r}, the model is "
                  f"{model.architecture!r}")
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for name, t in lora.tensors.items():
        if name.endswith(_LORA_SUFFIXES):
            pairs.setdefault(name[:-7], {})[name[-1]] = t
        elif not name.endswith("_norm.weight"):  # llama.cpp skips norm vectors
            raise bad(f"tensor {name!r} is neither .lora_a nor .lora_b")
    if not pairs:
        raise bad("it holds no LoRA tensors")
    for base, ab in sorted(pairs.items()):
        if len(ab) != 2:
            raise bad(f"{base} has lora_{next(iter(ab))} without lora_{'b' if 'a' in ab else 'a'}")
        w = model.tensors.get(base)
        if w is None:
            raise bad(f"{base} does not exist in the model (trained on another base model?)")
        a, b = ab["a"].shape, ab["b"].shape
        if len(w.shape) < 2 or len(a) < 2 or len(b) < 2 or a[0] != w.shape[0] \
                or b[1] != w.shape[1] or a[1] != b[0]:
            raise bad(f"{base}: lora_a {a} and lora_b {b} do not fit the model's {w.shape} "
                      "(trained on another base model?)")


def check_gguf_files(model_path: str | Path, lora_path: str | Path | None = None) -> None:
    """Check the model file, and the adapter against it, before llama.cpp sees either.

    The one call `LlamaCppModel` makes at construction; raises `ModelLoadError`."""
    model = read_gguf(model_path)
    if lora_path is not None:
        check_lora_matches(model, read_gguf(lora_path))
