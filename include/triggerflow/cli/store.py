"""CLI commands of the store and what is loaded into it: ``init-db``, ``load-profiles``, ``catalog``."""

from __future__ import annotations

import argparse

from include.triggerflow.cli.common import error, store_engine
from include.triggerflow.store.engines import describe


def cmd_init_db(args: argparse.Namespace) -> int:
    engine = store_engine(args)
    print(f"store ready at {describe(engine)}")
    return 0


def cmd_load_profiles(args: argparse.Namespace) -> int:
    import sys

    from include.triggerflow.profiles import (
        ProfileCsvError,
        ProfileStoreError,
        load_profiles_csv,
    )

    engine = store_engine(args)
    try:
        result = load_profiles_csv(engine, args.csv, skip_bad_rows=args.skip_bad_rows)
    except (ProfileCsvError, ProfileStoreError) as exc:
        return error(exc)
    print(f"profiles loaded from {args.csv}: {result.inserted} new, {result.updated} updated")
    for problem in result.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    return 0


def _products(count: int) -> str:
    return f"{count} product{'' if count == 1 else 's'}"


#: ``catalog show``'s columns; the last one (names) is not padded
CATALOG_COLUMNS = ("sku", "name", "price", "currency", "in_stock", "url", "image_url", "names")


def cmd_catalog(args: argparse.Namespace) -> int:
    import sys

    from include.triggerflow.catalog import (
        CatalogCsvError,
        CatalogStoreError,
        catalog_size,
        load_catalog_csv,
        lookup,
    )

    engine = store_engine(args)
    if args.action == "load":
        try:
            result = load_catalog_csv(engine, args.csv, skip_bad_rows=args.skip_bad_rows)
        except (CatalogCsvError, CatalogStoreError) as exc:
            return error(exc)
        with engine.connect() as conn:
            size = catalog_size(conn)
        print(f"catalogue loaded from {args.csv}: {result.inserted} new, {result.updated} updated ({_products(size)} in all)")
        for problem in result.skipped:
            print(f"skipped: {problem}", file=sys.stderr)
        return 0
    with engine.connect() as conn:
        if not args.skus:
            print(f"catalogue: {_products(catalog_size(conn))}")
            return 0
        items = lookup(conn, args.skus)
    table = [CATALOG_COLUMNS] + [
        (
            item.sku, item.name, "" if item.price is None else str(item.price), item.currency or "",
            "yes" if item.in_stock else "no", item.url or "", item.image_url or "",
            " ".join(f"{tag}={name}" for tag, name in sorted(item.names.items())),
        )
        for sku in dict.fromkeys(args.skus) if (item := items.get(sku)) is not None
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(CATALOG_COLUMNS) - 1)]
    for row in table:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip())
    missing = [sku for sku in dict.fromkeys(args.skus) if sku not in items]
    for sku in missing:
        print(f"not in the catalogue: {ascii(sku)[1:-1]}", file=sys.stderr)
    return 1 if missing else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the parser."""
    sub.add_parser("init-db", help="create the store tables").set_defaults(func=cmd_init_db)
    p = sub.add_parser("load-profiles", help="upsert profiles from a CSV file")
    p.add_argument("csv")
    p.add_argument("--skip-bad-rows", action="store_true", help="load the good rows and list the bad ones")
    p.set_defaults(func=cmd_load_profiles)
    p = sub.add_parser("catalog", help="the product catalogue: load it from CSV, show products")
    catalog_sub = p.add_subparsers(dest="action", required=True)
    c = catalog_sub.add_parser("load", help="upsert products from a CSV file (all-or-nothing unless --skip-bad-rows)")
    c.add_argument("csv")
    c.add_argument("--skip-bad-rows", action="store_true", help="load the good rows and list the bad ones")
    c = catalog_sub.add_parser("show", help="products by SKU as a table; no SKU: how many products there are")
    c.add_argument("skus", nargs="*", metavar="SKU")
    p.set_defaults(func=cmd_catalog)
