"""Simulated supplier price list: pure and deterministic, no SDK import.

A sibling module of `fanout.py`, to show that a directory image's modules import each other
(the image directory is put on sys.path).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

DEFAULT_SUPPLIERS = ["acme", "globex", "initech", "umbrella", "wonka"]


@dataclass(frozen=True)
class Quote:
    supplier: str
    sku: str
    quantity: int
    unit_price: float
    lead_days: int

    @property
    def total(self) -> float:
        return round(self.unit_price * self.quantity, 2)

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def quote(supplier: str, sku: str, quantity: int) -> Quote:
    """A supplier's price for `sku`: derived from a hash, so every run sees the same market."""
    h = int.from_bytes(hashlib.sha256(f"{supplier}/{sku}".encode()).digest()[:8], "big")
    unit_price = round(5.0 + (h % 2000) / 100, 2)          # 5.00 .. 24.99
    lead_days = 1 + (h >> 16) % 14                          # 1 .. 14
    return Quote(supplier, sku, quantity, unit_price, lead_days)


def best(quotes: list[dict]) -> dict:
    """Cheapest total; ties go to the shorter lead time, then the supplier name."""
    return min(quotes, key=lambda q: (q["total"], q["lead_days"], q["supplier"]))
