"""``vasp recommend --user ID``: print one user's published recommendation list.

Reads ``recommendations/dt=D/`` (the latest published date unless ``--date``) with pyarrow and
a filter on ``user_id`` (only matching row groups are decoded); no Spark, no DuckDB.
"""

from __future__ import annotations

import argparse
import json

from vasp_model.core import defaults
from vasp_model.core.args import add_warehouse_argument
from vasp_model.data import layout

DATASET = "recommendations"
HELP = "Print one user's published recommendation list."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", required=True, help="The user's original id (as in the input data, e.g. 42).")
    parser.add_argument("--date", default=None, help="Published date YYYY-MM-DD (default: the latest published).")
    parser.add_argument("-n", "--top-n", dest="n", type=int, default=10, help="How many items to print (default 10).")
    add_warehouse_argument(parser)
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")


def resolve_date(warehouse: str, date: str | None) -> str:
    """``date`` if it is published, else the latest published date; clear errors otherwise."""
    from vasp_model.data import storage

    dates = storage.published_dates(warehouse, DATASET)
    if date is not None:
        layout.check_date(date)
        if date not in dates:
            raise FileNotFoundError(
                f"no published recommendations for {date} under {warehouse}; published: {dates or 'none'}"
            )
        return date
    if not dates:
        raise FileNotFoundError(f"no published recommendations under {warehouse} (run `vasp score` first)")
    return dates[-1]


def user_recommendations(warehouse: str, user_id: str, date: str | None = None, n: int = 10) -> tuple[str, list[dict]]:
    """(date, rows sorted by rank) of ``user_id``'s list; ValueError for a user without a list."""
    import pyarrow.dataset as ds

    from vasp_model.data import storage

    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    date = resolve_date(warehouse, date)
    filesystem, path = storage.resolve(layout.recommendations_dir(warehouse, date))
    dataset = ds.dataset(path, format="parquet", filesystem=filesystem, ignore_prefixes=[".", "_"])
    table = dataset.to_table(filter=ds.field("user_id") == str(user_id))
    if table.num_rows == 0:
        raise ValueError(f"user {user_id!r} has no recommendations on {date} (unknown user id?)")
    rows = sorted(table.to_pylist(), key=lambda r: r["rank"])[:n]
    return date, rows


def show(warehouse: str, user: str, date: str | None = None, n: int = 10, as_json: bool = False) -> None:
    """Print ``user``'s list (a table, or one JSON object)."""
    date, rows = user_recommendations(warehouse, user, date, n)
    if as_json:
        print(json.dumps({"user_id": user, "date": date, "items": rows}, default=float))
        return
    first = rows[0]
    note = " (popularity fallback: no known item)" if first.get("fallback") else ""
    print(f"user {user} — recommendations of {date}, model version {first.get('model_version')}{note}")
    print(f"{'rank':>4}  {'item_id':<16} {'score':>10}")
    for row in rows:
        print(f"{row['rank']:>4}  {row['item_id']:<16} {row['score']:>10.4f}")


def run(args: argparse.Namespace) -> int:
    show(args.warehouse or defaults.default_warehouse(), args.user, args.date, args.n, args.json)
    return 0
