"""``python -m bench generate|run|breakdown|faults|search-explain …``
(also ``python3 dev.py bench …``)."""

from __future__ import annotations

import argparse
import sys

from bench import default_url


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["faults"]:
        # Its own parser (and --help): ``python3 dev.py bench faults …`` runs it with the
        # checkout's .venv, which a bare ``python -m bench.faults`` would not have.
        from bench.faults import main as faults_main

        return faults_main(args_in[1:])
    if args_in[:1] == ["search-explain"]:
        from bench.search import main as search_main

        return search_main(args_in[1:])
    if args_in[:1] == ["search-cpu"]:
        from bench.search import cpu_main

        return cpu_main(args_in[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "faults",
        help="restart a private PostgreSQL under write load "
        "(see `faults --help`, docs/operations.md)",
    )
    sub.add_parser(
        "search-cpu",
        help="Python and PostgreSQL CPU per q search request, in-process (see `search-cpu --help`)",
    )
    sub.add_parser(
        "search-explain",
        help="EXPLAIN of the statements a q search runs per role (see `search-explain --help`)",
    )

    gen = sub.add_parser("generate", help="drop, create, migrate and fill a bench database")
    gen.add_argument(
        "--database-url",
        default=default_url(),
        help="server and database name (must contain 'bench'); "
        "default $CRM_BENCH_DATABASE_URL or %(default)s",
    )
    gen.add_argument("--customers", type=int, default=100_000)
    gen.add_argument("--seed", type=int, default=2026)
    gen.add_argument("--jobs", type=int, default=2, help="loader processes (default 2)")
    gen.add_argument("--batch", type=int, default=10_000, help="customers per COPY")
    gen.add_argument(
        "--orders",
        type=int,
        default=0,
        help="also a 200-product catalog and this many orders (1-3 lines each) on the "
        "customers (bench/orders.py)",
    )
    gen.add_argument(
        "--keep-indexes",
        action="store_true",
        help="load with every index and key in place (slower; for comparison)",
    )

    run = sub.add_parser("run", help="load-test a real uvicorn server against the bench db")
    from bench.load import add_arguments

    add_arguments(run)

    bd = sub.add_parser("breakdown", help="CPU per request layer by layer, in-process")
    bd.add_argument("--database-url", default=default_url())
    bd.add_argument("-n", type=int, default=500, help="requests per round")
    bd.add_argument("--rounds", type=int, default=3)
    bd.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="instead: py-spy the in-process app for SECONDS per request "
        "kind and group the samples by layer",
    )
    bd.add_argument(
        "--orders",
        action="store_true",
        help="instead: the order scenarios (create, one customer's orders, my orders), "
        "with statements per request",
    )
    args = parser.parse_args(args_in)

    if args.command == "generate":
        from bench.generate import generate

        generate(
            args.database_url,
            args.customers,
            seed=args.seed,
            jobs=args.jobs,
            batch=args.batch,
            keep_indexes=args.keep_indexes,
        )
        if args.orders:
            from bench import asyncpg_url
            from bench.orders import generate_orders

            generate_orders(
                asyncpg_url(args.database_url),
                args.orders,
                seed=args.seed,
                jobs=args.jobs,
                batch=args.batch,
            )
        return 0
    if args.command == "breakdown":
        from bench.breakdown import breakdown_command

        return breakdown_command(
            args.database_url, args.n, args.rounds, args.profile, orders=args.orders
        )
    from bench.load import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
