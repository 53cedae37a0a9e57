"""Orders for the bench database: a product catalog and ``--orders`` orders with 1-3 lines
each, on the customers ``bench generate`` made (``python -m bench generate --orders N``).

Each order belongs to a customer drawn with skewed weights (a few customers order a lot,
most a little), is placed like it (owner, org unit, ``created_by`` = the owner), dated
after the customer's creation, and carries totals computed by the app's own arithmetic
(crm_api.order.pricing), so the CHECK constraints and the API agree with every row. Loaded
with binary COPY from ``jobs`` processes with the tables' keys and indexes dropped, then
re-created from the migration's definitions (as the customers are); the order-number
sequence is moved past the numbers used.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from bench.generate import DEFINITIONS_SQL, _cum, _uuid

TABLES = ("orders", "order_lines")
PRODUCT_COLUMNS = (
    "id",
    "sku",
    "name",
    "brand",
    "series",
    "category",
    "unit",
    "list_price",
    "currency",
    "tax_rate",
    "active",
)
ORDER_COLUMNS = (
    "id",
    "number",
    "customer_id",
    "channel",
    "status",
    "external_ref",
    "created_by",
    "currency",
    "subtotal",
    "discount",
    "tax",
    "total",
    "owner_id",
    "org_unit_id",
    "confirmed_at",
    "shipped_at",
    "delivered_at",
    "completed_at",
    "cancelled_at",
    "created_at",
    "updated_at",
    "version",
    "deleted_at",
)
LINE_COLUMNS = (
    "id",
    "order_id",
    "position",
    "product_id",
    "sku",
    "name",
    "quantity",
    "unit_price",
    "discount",
    "tax_rate",
    "subtotal",
    "tax",
    "total",
)
CATALOG = [
    ("HP", "LaserJet Pro", "打印机", "台", "激光打印机"),
    ("Canon", "imageCLASS", "打印机", "台", "彩色激光打印机"),
    ("Lenovo", "ThinkPad", "笔记本电脑", "台", "商务笔记本"),
    ("Dell", "Latitude", "笔记本电脑", "台", "轻薄笔记本"),
    ("Huawei", "MateBook", "笔记本电脑", "台", "全面屏笔记本"),
    ("得力", "办公", "办公用品", "箱", "A4 复印纸"),
    ("晨光", "文具", "办公用品", "盒", "中性笔"),
    ("Epson", "WorkForce", "打印机", "台", "喷墨一体机"),
]
STATUSES = (
    ["pending", "confirmed", "shipped", "delivered", "completed", "cancelled"],
    [5, 5, 5, 10, 65, 10],
)
CHANNELS = (["web", "storefront", "phone", "sales", "partner"], [30, 30, 10, 25, 5])
STAMPS = ("confirmed_at", "shipped_at", "delivered_at", "completed_at")


@dataclass(frozen=True, slots=True)
class Product:
    id: uuid.UUID
    sku: str
    name: str
    price: Decimal
    tax_rate: Decimal


def products(rng: random.Random, n: int) -> tuple[list[Product], list[tuple[Any, ...]]]:
    made: list[Product] = []
    rows: list[tuple[Any, ...]] = []
    for i in range(n):
        brand, series, category, unit, kind = CATALOG[i % len(CATALOG)]
        price = Decimal(rng.choice((9, 19, 49, 99, 299, 1299, 2599, 5999))) + Decimal("0.90")
        rate = Decimal(rng.choice(("0.13", "0.13", "0.09", "0.06")))
        p = Product(
            _uuid(rng), f"{brand[:3].upper()}-{i:05d}", f"{brand} {series} {kind} {i}", price, rate
        )
        made.append(p)
        rows.append((p.id, p.sku, p.name, brand, series, category, unit, price, "CNY", rate, True))
    return made, rows


@dataclass(frozen=True, slots=True)
class Shard:
    url: str
    first: int
    count: int
    seed: int
    batch: int
    customers: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID | None, datetime]]
    customer_cum: list[float]
    products: list[Product]
    now: datetime


def order_batch(
    rng: random.Random, shard: Shard, first: int, n: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    from crm_api.order.pricing import LineInput, price_order

    picks = rng.choices(shard.customers, cum_weights=shard.customer_cum, k=n)
    statuses = rng.choices(*STATUSES, k=n)
    channels = rng.choices(*CHANNELS, k=n)
    orders: list[tuple[Any, ...]] = []
    lines: list[tuple[Any, ...]] = []
    for k in range(n):
        i = first + k
        customer_id, owner_id, unit_id, since = picks[k]
        oid = _uuid(rng)
        span = max(60.0, (shard.now - since).total_seconds())
        created = since + timedelta(seconds=span * rng.random() ** 0.5)
        chosen = rng.sample(shard.products, rng.choice((1, 2, 2, 3)))
        inputs = [
            LineInput(
                Decimal(rng.choice((1, 1, 2, 3, 5, 10))),
                p.price,
                Decimal(rng.choice((0, 0, 0, 5))),
                p.tax_rate,
            )
            for p in chosen
        ]
        amounts = price_order(inputs, 2)
        for pos, (p, given, got) in enumerate(zip(chosen, inputs, amounts.lines, strict=True)):
            lines.append(
                (
                    _uuid(rng),
                    oid,
                    pos,
                    p.id,
                    p.sku,
                    p.name,
                    given.quantity,
                    p.price,
                    got.discount,
                    p.tax_rate,
                    got.subtotal,
                    got.tax,
                    got.total,
                )
            )
        status = statuses[k]
        stamps: list[datetime | None] = [None] * 4
        cancelled = None
        at = created
        reached = {"confirmed": 1, "shipped": 2, "delivered": 3, "completed": 4}.get(status, 0)
        for s in range(reached):
            at = at + timedelta(hours=rng.uniform(1, 72))
            stamps[s] = at
        if status == "cancelled":
            at = cancelled = created + timedelta(hours=rng.uniform(1, 48))
        orders.append(
            (
                oid,
                f"SO-{i + 1:08d}",
                customer_id,
                channels[k],
                status,
                f"web-{i}" if channels[k] in ("web", "storefront") else None,
                owner_id,
                "CNY",
                amounts.subtotal,
                amounts.discount,
                amounts.tax,
                amounts.total,
                owner_id,
                unit_id,
                *stamps,
                cancelled,
                created,
                min(at, shard.now),
                1 + reached + (status == "cancelled"),
                None,
            )
        )
    return orders, lines


async def _load_shard(shard: Shard) -> tuple[int, int]:
    rng = random.Random(shard.seed)
    conn = await asyncpg.connect(shard.url)
    try:
        await conn.execute("SET synchronous_commit = off")
        done = n_lines = 0
        while done < shard.count:
            n = min(shard.batch, shard.count - done)
            orders, lines = order_batch(rng, shard, shard.first + done, n)
            async with conn.transaction():
                await conn.copy_records_to_table("orders", columns=ORDER_COLUMNS, records=orders)
                await conn.copy_records_to_table("order_lines", columns=LINE_COLUMNS, records=lines)
            done += n
            n_lines += len(lines)
        return done, n_lines
    finally:
        await conn.close()


def _shard_main(shard: Shard) -> tuple[int, int]:
    return asyncio.run(_load_shard(shard))


async def _definitions(conn: asyncpg.Connection) -> list[dict[str, str]]:
    rows = await conn.fetch(DEFINITIONS_SQL, list(TABLES), list(TABLES))
    return [dict(r) for r in rows]


def generate_orders(
    url: str, orders: int, *, seed: int = 2026, jobs: int = 2, batch: int = 10_000
) -> dict[str, Any]:
    """Products and ``orders`` orders into the bench database at ``url`` (asyncpg form),
    which ``bench generate`` has just filled with customers."""
    from bench.generate import drop_keys, restore_keys

    t = time.perf_counter()
    rng = random.Random(seed + 7)
    catalog, product_rows = products(rng, 200)

    async def prepare() -> tuple[list[Any], list[dict[str, str]]]:
        conn = await asyncpg.connect(url)
        try:
            await conn.copy_records_to_table(
                "products", columns=PRODUCT_COLUMNS, records=product_rows
            )
            rows = await conn.fetch(
                "SELECT id, owner_id, org_unit_id, created_at FROM customers "
                "WHERE deleted_at IS NULL ORDER BY id"
            )
            defs = await _definitions(conn)
            await drop_keys(conn, defs)
            return [tuple(r) for r in rows], defs
        finally:
            await conn.close()

    customers, defs = asyncio.run(prepare())
    # Zipf-like: the k-th customer (in a shuffled order) weighs 1 / (k + 10)
    rng.shuffle(customers)
    weights = [1 / (k + 10) for k in range(len(customers))]
    cum = _cum(weights)
    now = datetime.now(UTC).replace(microsecond=0)
    jobs = max(1, min(jobs, orders // 1000 or 1))
    per = -(-orders // jobs)
    shards = [
        Shard(
            url,
            s * per,
            min(per, orders - s * per),
            seed * 7919 + s,
            batch,
            customers,
            cum,
            catalog,
            now,
        )
        for s in range(jobs)
        if s * per < orders
    ]
    if len(shards) == 1:
        results = [_shard_main(shards[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(len(shards)) as pool:
            results = pool.map(_shard_main, shards)
    n_orders = sum(r[0] for r in results)
    n_lines = sum(r[1] for r in results)
    print(f"  COPY {n_orders:,} orders + {n_lines:,} lines {time.perf_counter() - t:8.2f} s")
    asyncio.run(restore_keys(url, defs, jobs))

    async def finish() -> None:
        conn = await asyncpg.connect(url)
        try:
            after = await _definitions(conn)
            if after != defs:
                raise SystemExit("orders' keys/indexes differ from the migration's after the load")
            await conn.execute("SELECT setval('orders_number_seq', $1)", n_orders + 1)
            await conn.execute("VACUUM (ANALYZE) orders, order_lines, products")
        finally:
            await conn.close()

    asyncio.run(finish())
    total = round(time.perf_counter() - t, 2)
    print(f"  {'orders total':<28} {total:8.2f} s")
    return {"orders": n_orders, "order_lines": n_lines, "products": len(catalog), "orders_s": total}
