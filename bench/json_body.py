"""``python -m bench.json_body``: what parsing a request body costs, before and after the
duplicate-key check (kit/body.py).

Three parsers over bodies of about 1 KB and 100 KB shaped like the API's own (a customer,
orders with few and many lines, a customer with long notes):

* ``json.loads``: what Starlette's ``Request.json()`` did (last key wins);
* ``loads_body``: what every route does now (orjson, then a count of ``:`` proving no member
  was lost; the slow path below when it cannot prove it);
* ``slow path``: ``json`` with the repeated-key hook, what a body with a 19-digit run, a
  ``\\u003a`` escape, NaN or a duplicate key takes.

Best of ``--repeat`` rounds of ``timeit`` per parser and body, in CPU time of this
process (``time.process_time``: on a busy machine wall time counts the waits for a core),
the three interleaved round by round. No database.
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from typing import Any

import orjson

from crm_api.kit.body import _loads_strict, loads_body


def _customer(notes: int) -> dict[str, Any]:
    return {
        "name": "上海明远贸易有限公司",
        "type": "company",
        "email": "sales@mingyuan.example.cn",
        "phone": "+86 21 5555 0101",
        "address": "88 Century Avenue, Pudong, Shanghai",
        "region": "east",
        "industry": "retail",
        "grade": "A",
        "credit_level": 3,
        "tags": ["vip", "wholesale"],
        "external_ref": "shop-000123",
        "website": "https://mingyuan.example.cn/about",
        "custom_fields": {"source": "storefront", "since": "2024-01-01T00:00:00Z", "score": 12.5},
        "notes": "Called on Monday: wants a quote.\n" * (notes // 33),
    }


def _order(lines: int) -> dict[str, Any]:
    return {
        "customer_id": "0b5e3c1e-6c2a-4d57-9d8f-6a0c1d1b2e3f",
        "currency": "CNY",
        "channel": "web",
        "lines": [
            {
                "product_id": "1c8e2a44-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
                "quantity": str(i % 7 + 1),
                "unit_price": "19.90",
                "note": "gift wrap",
            }
            for i in range(lines)
        ],
    }


BODIES = {
    "customer 1 KB": orjson.dumps(_customer(450)),
    "order, 6 lines, 1 KB": orjson.dumps(_order(7)),
    "order, 700 lines, 100 KB": orjson.dumps(_order(750)),
    "customer, long notes, 100 KB": orjson.dumps(_customer(100_000)),
}
PARSERS = {"json.loads": json.loads, "loads_body": loads_body, "slow path": _loads_strict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(f"{'body':30} {'bytes':>7} " + " ".join(f"{name:>12}" for name in PARSERS))
    for label, body in BODIES.items():
        expected = json.loads(body)
        assert all(parse(body) == expected for parse in PARSERS.values())
        number = max(20, 200_000 // len(body))
        best = dict.fromkeys(PARSERS, float("inf"))
        for _ in range(args.repeat):
            for name, parse in PARSERS.items():
                seconds = (
                    timeit.Timer(lambda p=parse, b=body: p(b), timer=time.process_time).timeit(
                        number
                    )
                    / number
                )
                best[name] = min(best[name], seconds)
        print(
            f"{label:30} {len(body):7} "
            + " ".join(f"{best[name] * 1e6:9.1f} µs" for name in PARSERS)
        )


if __name__ == "__main__":
    main()
