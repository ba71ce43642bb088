"""Cost: a price table per model, and the dollar cost of one model call.

Why two kinds of price: a hosted model is billed per token (USD per 1M input and output tokens),
but a small model running here is paid for by the hour of the machine it runs on; its honest cost
is that compute price times the seconds the call held the machine (``usd_per_hour * latency``).
Local backends (llama.cpp, transformers, the test fakes) default to the configured compute price;
anything else without a price entry gets no cost (``None``: unknown, not free).

The table comes from, in order: `configure_prices(...)`, the file ``$SLMFLOW_PRICES`` or
``$SLMFLOW_HOME/prices.yaml`` if present, else built-in defaults. File format (YAML or JSON)::

    compute_usd_per_hour: 0.20        # local models, per hour of this machine
    models:                           # keys: model identity, name, or a glob ("qwen2.5-*")
      gpt-4o-mini: {input_per_1m: 0.15, output_per_1m: 0.60}
      smollm2-135m: {usd_per_hour: 0.10}
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..types import ModelInfo, Usage

# A small cloud CPU VM (2-4 vCPU) is about $0.05-0.20 an hour; the upper end, to not flatter.
DEFAULT_COMPUTE_USD_PER_HOUR = 0.20
LOCAL_PROVIDERS = frozenset({"llama.cpp", "llamacpp", "transformers", "function"})


@dataclass(frozen=True)
class Price:
    """USD per 1M input / output tokens, or (local models) USD per hour of compute."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    usd_per_hour: float | None = None

    def cost(self, usage: Usage, latency_s: float) -> float:
        if self.usd_per_hour is not None:
            return self.usd_per_hour * max(latency_s, 0.0) / 3600.0
        return (usage.input_tokens * self.input_per_1m
                + usage.output_tokens * self.output_per_1m) / 1e6


class PriceTable:
    """Looks a model up by identity (``name+adapter``), then name, then glob patterns."""

    def __init__(self, models: Mapping[str, Price | Mapping[str, Any]] | None = None, *,
                 compute_usd_per_hour: float | None = DEFAULT_COMPUTE_USD_PER_HOUR,
                 local_providers: frozenset[str] = LOCAL_PROVIDERS) -> None:
        self.models: dict[str, Price] = {
            k: v if isinstance(v, Price) else Price(**dict(v)) for k, v in (models or {}).items()}
        self.compute_usd_per_hour = compute_usd_per_hour
        self.local_providers = local_providers

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "PriceTable":
        return cls(data.get("models") or {},
                   compute_usd_per_hour=data.get("compute_usd_per_hour",
                                                 DEFAULT_COMPUTE_USD_PER_HOUR))

    @classmethod
    def from_file(cls, path: str | Path) -> "PriceTable":
        from ..errors import ConfigError

        p = Path(path)
        try:
            text = p.read_text()
            if p.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text) or {}
            return cls.from_mapping(data)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"cannot read the price table: {e}", where=str(p)) from None

    def price_for(self, info: ModelInfo) -> Price | None:
        for key in (info.identity, info.name):
            if key in self.models:
                return self.models[key]
        for pattern, price in self.models.items():
            if any(c in pattern for c in "*?[") and (fnmatch.fnmatchcase(info.identity, pattern)
                                                     or fnmatch.fnmatchcase(info.name, pattern)):
                return price
        if info.provider in self.local_providers and self.compute_usd_per_hour is not None:
            return Price(usd_per_hour=self.compute_usd_per_hour)
        return None

    def cost(self, info: ModelInfo, usage: Usage, latency_s: float) -> float | None:
        """USD for one call, or None when the model has no price."""
        price = self.price_for(info)
        return None if price is None else price.cost(usage, latency_s)


_table: PriceTable | None = None


def configure_prices(table: PriceTable | Mapping[str, Any] | str | Path | None) -> PriceTable:
    """Set the process-wide price table (a `PriceTable`, a mapping as in the file, or a path);
    None goes back to the file or the defaults."""
    global _table
    if table is None:
        _table = None
        return prices()
    if isinstance(table, PriceTable):
        _table = table
    elif isinstance(table, (str, Path)):
        _table = PriceTable.from_file(table)
    else:
        _table = PriceTable.from_mapping(table)
    return _table


def prices() -> PriceTable:
    """The price table in use (loaded on first use)."""
    global _table
    if _table is None:
        path = os.environ.get("SLMFLOW_PRICES")
        if not path:
            from ..home import home

            candidate = home() / "prices.yaml"
            path = str(candidate) if candidate.is_file() else None
        _table = PriceTable.from_file(path) if path else PriceTable()
    return _table
