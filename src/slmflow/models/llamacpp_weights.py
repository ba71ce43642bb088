"""Weight formats of a GGUF model: the shipped file converted once to the format that fits the CPU.

Why a conversion at all: the embedded SmolLM2-135M ships as Q4_1, the smallest file and the
fastest to decode (decode reads every weight once per token), but prompt evaluation, which is
where a chain of small agents spends its time, runs 1.7x faster on Q8_0 here (docs/benchmarks.md,
"Kernels and weight format"). The other formats are made from the shipped file in seconds with
llama.cpp's own quantizer and cached under ``$SLMFLOW_HOME/models``, the way the transformers
path caches its dequantized copy. Training always reads the file as shipped (`source_path`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from .llamacpp_pool import _import_llama_cpp, _quiet_stderr

WEIGHT_FORMATS = {"q4_1": 3, "q8_0": 7, "f16": 1, "bf16": 32}
"""Weight formats a GGUF can be converted to (llama.cpp file types). Which is fastest depends on
the CPU and on how llama.cpp was built: docs/benchmarks.md, "Kernels and weight format"."""

_CONVERT_LOCK = threading.Lock()


def gguf_in_format(path: Path, fmt: str | None, *, where: str = "llamacpp") -> Path:
    """`path` converted to weight format `fmt`, made once under ``$SLMFLOW_HOME/models`` (the
    way the transformers path caches its dequantized copy) and reused. ``None`` or the file's
    own format returns `path` unchanged. Conversion requantizes (``allow_requantize``): from the
    shipped Q4_1, Q8_0/F16/BF16 hold the same values (to their precision), so quality is the
    shipped file's, and only speed changes."""
    if fmt is None:
        return path
    fmt = fmt.lower()
    if fmt not in WEIGHT_FORMATS:
        raise ConfigError(f"unknown weight format {fmt!r}; one of {', '.join(WEIGHT_FORMATS)}",
                          where=where)
    if path.stem.lower().endswith(fmt.replace("_", "")) or path.stem.lower().endswith(fmt):
        return path
    from ..home import subdir

    st = path.stat()
    target = subdir("models") / f"{path.stem}.{st.st_size}-{int(st.st_mtime)}.{fmt}.gguf"
    if target.is_file():
        return target
    llama_cpp = _import_llama_cpp()
    with _CONVERT_LOCK:
        if target.is_file():
            return target
        src_type = _file_type(path)
        if src_type == WEIGHT_FORMATS[fmt]:
            return path
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = WEIGHT_FORMATS[fmt]
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with _quiet_stderr():
            rc = llama_cpp.llama_model_quantize(str(path).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise ModelLoadError(f"llama.cpp could not convert {path.name} to {fmt} (rc {rc})",
                                 where=where)
        os.replace(tmp, target)
    return target


def _file_type(path: Path) -> int | None:
    """general.file_type of a GGUF, read from its header (None when absent)."""
    try:
        from gguf import GGUFReader

        f = GGUFReader(str(path)).fields.get("general.file_type")
        return int(f.parts[f.data[0]][0]) if f is not None else None
    except Exception:
        return None


def default_weights() -> str | None:
    """The weight format the embedded model runs in: ``$SLMFLOW_LLAMA_WEIGHTS`` (q4_1 | q8_0 |
    f16 | bf16 | as-shipped), else the measured default (docs/benchmarks.md)."""
    env = os.environ.get("SLMFLOW_LLAMA_WEIGHTS", "").strip().lower()
    if env in ("as-shipped", "shipped", "none"):
        return None
    if env:
        if env not in WEIGHT_FORMATS:
            raise ConfigError(f"SLMFLOW_LLAMA_WEIGHTS must be one of {', '.join(WEIGHT_FORMATS)} "
                              f"or as-shipped, got {env!r}", where="SLMFLOW_LLAMA_WEIGHTS")
        return env
    return DEFAULT_WEIGHTS


DEFAULT_WEIGHTS: str | None = "q8_0"
"""Measured on this project's 2-core machine (docs/benchmarks.md, "Kernels and weight format"):
Q8_0 prefills 1.7x faster than the shipped Q4_1 and decodes 0.83x as fast; a chain's cost is
mostly prefill, so Q8_0 wins. Its adapters' eval scores match Q4_1's."""
