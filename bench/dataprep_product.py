"""Kept for its name: the product-path data preparation benchmark is :mod:`bench.dataprep`
(both outputs, both databases, 1 and 2 processes, from a populated database). Run
``python -m bench.dataprep``; ``YKT_BENCH_PRODUCT_CARDS`` still sets the cards per run."""

from __future__ import annotations

import os
from typing import Any

if "YKT_BENCH_PRODUCT_CARDS" in os.environ:
    os.environ.setdefault("YKT_BENCH_DATAPREP_CARDS", os.environ["YKT_BENCH_PRODUCT_CARDS"])

from bench.dataprep import main as _main


def main() -> dict[str, Any]:
    return _main()


if __name__ == "__main__":
    os.environ.pop("SOFTHSM2_CONF", None)
    main()
