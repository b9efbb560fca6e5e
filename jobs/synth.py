"""``vasp synth``: synthetic user-item ratings with a real latent structure.

A topic model (a non-negative low-rank factorization): each user has a taste vector
``theta_u ~ Dirichlet(user_concentration)`` over ``topics`` latent topics, each item a factor
vector ``v_i ~ Dirichlet(item_concentration)`` (mostly one or two topics) and a long-tail
(Zipf) base popularity. A user's events are drawn from ``P(i | u) = sum_k theta_uk phi_k(i)``
with ``phi_k(i) ~ popularity_i * v_ik`` (plus a share of popularity-only "noise" events), and
the rating grows with the user-item affinity ``theta_u . v_i`` so that thresholding at 3.5
keeps the taste-driven events: a model can learn something, a popularity baseline less.
User activity is log-normal (heavy users and light users). Each (user, item) pair appears at
most once; rows are grouped by user like MovieLens' ``ratings.csv``.

Drift, for simulating nights that differ (all off by default, which leaves the output unchanged):
``launch_items`` new items (ids after ``items``) enter with head-of-catalog popularity,
``retire_items`` items drop out of the catalog (no events), ``popularity_shift`` moves the
popularity ranks along the catalog (a share of its length), ``volume_scale`` keeps that share of
the users (the others send no events). The drift draws its own random stream, so a drifted data
set keeps every other user's events as they were.

Vectorized numpy, generated and written in chunks of users: a MovieLens-20M-sized file
(138k users, 27k items, 20M rows) takes well under a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import time
from typing import Any

import numpy as np

COLUMNS = ("user_id", "item_id", "rating", "timestamp")
RATING_BASE, RATING_SCALE, RATING_POWER = 1.6, 4.0, 0.4  # ~47% of ratings > 3.5, like MovieLens
_T0, _T1 = 946_684_800, 1_427_760_000  # 2000-01-01 .. 2015-03-31 (UTC)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic data set."""

    users: int = 3000
    items: int = 1500
    interactions: int = 0  # total rows; 0 = users * mean_per_user
    mean_per_user: float = 60.0
    min_per_user: int = 3
    topics: int = 24
    zipf: float = 1.0  # item popularity ~ 1 / (rank + 10) ** zipf
    noise: float = 0.25  # share of events drawn from popularity alone (mostly low ratings)
    user_concentration: float = 0.3
    item_concentration: float = 0.1
    activity_sigma: float = 0.9  # log-normal spread of events per user
    seed: int = 0
    launch_items: int = 0  # drift: new items (ids items+1..) with head-of-catalog popularity
    retire_items: int = 0  # drift: items that get no events any more
    popularity_shift: float = 0.0  # drift: popularity ranks move by this share of the catalog
    volume_scale: float = 1.0  # drift: the share of users that send events

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.items < 2:
            raise ValueError(f"items must be >= 2, got {self.items}")
        if self.interactions < 0:
            raise ValueError(f"interactions must be >= 0, got {self.interactions}")
        if self.mean_per_user <= 0:
            raise ValueError(f"mean_per_user must be > 0, got {self.mean_per_user}")
        if self.min_per_user < 1:
            raise ValueError(f"min_per_user must be >= 1, got {self.min_per_user}")
        if self.topics < 1:
            raise ValueError(f"topics must be >= 1, got {self.topics}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.zipf < 0 or self.user_concentration <= 0 or self.item_concentration <= 0:
            raise ValueError("zipf must be >= 0 and the concentrations > 0")
        if self.activity_sigma < 0:
            raise ValueError(f"activity_sigma must be >= 0, got {self.activity_sigma}")
        if self.launch_items < 0:
            raise ValueError(f"launch_items must be >= 0, got {self.launch_items}")
        if not 0 <= self.retire_items <= self.items // 2:
            raise ValueError(f"retire_items must be in [0, items / 2], got {self.retire_items}")
        if not 0.0 <= self.popularity_shift < 1.0:
            raise ValueError(f"popularity_shift must be in [0, 1), got {self.popularity_shift}")
        if not 0.0 < self.volume_scale <= 1.0:
            raise ValueError(f"volume_scale must be in (0, 1], got {self.volume_scale}")

    @property
    def drifted(self) -> bool:
        return bool(self.launch_items or self.retire_items or self.popularity_shift or self.volume_scale != 1.0)

    @property
    def catalog(self) -> int:
        """Item ids run 1..catalog (launched items included)."""
        return self.items + self.launch_items

    @property
    def total(self) -> int:
        return self.interactions or int(round(self.users * self.mean_per_user))

    def tag(self) -> str:
        return f"synth-u{self.users}-i{self.items}-n{self.total}-s{self.seed}"


DRIFT_FIELDS = {"launch_items": int, "retire_items": int, "popularity_shift": float, "volume_scale": float}


def parse_drift(spec: str) -> dict[str, dict[str, float]]:
    """A drift schedule ``"D1:launch_items=30,retire_items=30;D2:volume_scale=0.5"`` as ``{date: {field: value}}``."""
    schedule: dict[str, dict[str, float]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        date, sep, body = entry.partition(":")
        if not sep:
            raise ValueError(f"drift entry {entry!r} must be DATE:field=value,...")
        try:
            dt.date.fromisoformat(date.strip())
        except ValueError as exc:
            raise ValueError(f"drift entry {entry!r}: {date.strip()!r} is not a date YYYY-MM-DD") from exc
        changes: dict[str, float] = {}
        for pair in filter(None, (p.strip() for p in body.split(","))):
            name, eq, value = pair.partition("=")
            if not eq or name.strip() not in DRIFT_FIELDS:
                raise ValueError(f"drift entry {entry!r}: expected one of {', '.join(DRIFT_FIELDS)} as field=value")
            try:
                changes[name.strip()] = DRIFT_FIELDS[name.strip()](value)
            except ValueError as exc:
                raise ValueError(f"drift entry {entry!r}: {value!r} is not a number") from exc
        schedule[date.strip()] = changes
    return schedule


def drift_on(schedule: dict[str, dict[str, float]], date: str) -> dict[str, float]:
    """The drift in force on ``date``: every change dated on or before it, later ones winning
    (a catalog shift stays shifted; a volume drop lasts until a later entry lifts it)."""
    drift: dict[str, float] = {}
    for when in sorted(schedule):
        if when <= date:
            drift.update(schedule[when])
    return drift


def _drift_catalog(
    cfg: SynthConfig, popularity: np.ndarray, item_ids: np.ndarray, factors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The catalog after ``cfg``'s drift: shifted popularity, retired items at zero, launched items appended."""
    rng = np.random.default_rng([cfg.seed, 1])  # the drift's own stream: the base draws stay as they were
    n = popularity.size
    popularity = np.roll(popularity, int(round(cfg.popularity_shift * n)))
    if cfg.retire_items:
        popularity = popularity.copy()
        popularity[rng.choice(n, cfg.retire_items, replace=False)] = 0.0
    if cfg.launch_items:
        head = popularity[popularity > 0][: max(1, n // 10)]  # launches are as popular as the current head
        launched = rng.choice(head, cfg.launch_items)
        popularity = np.concatenate([popularity, launched])
        item_ids = np.concatenate([item_ids, np.arange(n + 1, n + cfg.launch_items + 1)])
        new_factors = rng.dirichlet(np.full(factors.shape[1], cfg.item_concentration), cfg.launch_items)
        factors = np.vstack([factors, new_factors.astype(np.float32)])
    return popularity / popularity.sum(), item_ids, factors


@dataclasses.dataclass(frozen=True)
class SynthStageConfig:
    """Stage ``synth``: which data set (``data``) goes to which file (``out``, CSV or Parquet)."""

    out: str
    format: str = "csv"
    data: SynthConfig = dataclasses.field(default_factory=SynthConfig)
    log: EventLogConfig | None = None  # set: write an event log (a directory of dt= partitions) to ``out``


@dataclasses.dataclass(frozen=True)
class EventLogConfig:
    """An event log of ``days`` days ending with ``end_date``: each event gets a time in that span and
    lands in the partition of its day, except a ``late_share`` that arrives one day late."""

    days: int = 7
    end_date: str = "2024-01-07"
    late_share: float = 0.02

    def __post_init__(self) -> None:
        import datetime as dt

        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        try:
            dt.date.fromisoformat(self.end_date)
        except ValueError as exc:
            raise ValueError(f"end_date must be YYYY-MM-DD, got {self.end_date!r}") from exc
        if not 0.0 <= self.late_share < 1.0:
            raise ValueError(f"late_share must be in [0, 1), got {self.late_share}")


def _activity(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Events per user: log-normal, clipped to [min_per_user, items // 2], summing to ~total."""
    cap = max(cfg.min_per_user, cfg.items // 2)
    weights = rng.lognormal(0.0, cfg.activity_sigma, cfg.users)
    n = weights * (cfg.total / weights.sum())
    for _ in range(5):  # rescale the unclipped users so the clipped total matches
        clipped = np.clip(n, cfg.min_per_user, cap)
        free = (clipped > cfg.min_per_user) & (clipped < cap)
        gap = cfg.total - clipped.sum()
        if abs(gap) < 1 or not free.any():
            break
        n = np.where(free, n * (1 + gap / clipped[free].sum()), n)
    n = np.clip(np.floor(n), cfg.min_per_user, cap).astype(np.int64)
    # hand out the rounding remainder one event at a time
    gap = int(cfg.total - n.sum())
    if gap > 0:
        room = np.flatnonzero(n < cap)
        n[rng.choice(room, size=min(gap, room.size), replace=False)] += 1
    return n


def _iter_chunks(cfg: SynthConfig, chunk_users: int):
    """Yield dict-of-arrays chunks (user_id, item_id, rating, timestamp), grouped by user."""
    rng = np.random.default_rng(cfg.seed)
    n_items, k = cfg.items, cfg.topics
    popularity = 1.0 / (np.arange(n_items) + 10.0) ** cfg.zipf
    popularity /= popularity.sum()
    item_ids = rng.permutation(n_items) + 1  # popularity rank -> public item id
    factors = rng.dirichlet(np.full(k, cfg.item_concentration), n_items).astype(np.float32)  # (I, K)
    if cfg.drifted:
        popularity, item_ids, factors = _drift_catalog(cfg, popularity, item_ids, factors)
        n_items = popularity.size
    # within a topic, popularity is damped (^0.75) so that tastes, not only popularity, pick items
    topic_item = popularity[:, None] ** 0.75 * factors  # (I, K)
    rows = np.vstack([(topic_item / topic_item.sum(axis=0, keepdims=True)).T, popularity[None, :]])  # (K+1, I)
    item_cdf = np.cumsum(rows, axis=1)
    item_cdf /= item_cdf[:, -1:]
    item_cdf = (item_cdf + np.arange(k + 1)[:, None]).ravel()  # row t offset by t: one searchsorted
    counts = _activity(cfg, rng)
    active = np.ones(cfg.users, dtype=bool)
    if cfg.volume_scale < 1.0:  # the other users send no events tonight
        active = np.random.default_rng([cfg.seed, 2]).random(cfg.users) < cfg.volume_scale

    for start in range(0, cfg.users, chunk_users):
        stop = min(cfg.users, start + chunk_users)
        n_u = counts[start:stop]
        theta = rng.dirichlet(np.full(k, cfg.user_concentration), stop - start).astype(np.float32)
        # Oversample draws, drop repeated (user, item) pairs, keep the first n_u of each user.
        draws = np.ceil(n_u * 1.3 + 5).astype(np.int64)
        user = np.repeat(np.arange(stop - start), draws)
        m = user.size
        noise = rng.random(m) < cfg.noise
        # Topic of each draw: one searchsorted over the users' stacked taste CDFs (row u offset by u).
        cum = np.cumsum(theta, axis=1, dtype=np.float64)
        cum /= cum[:, -1:]
        stacked = (cum + np.arange(stop - start)[:, None]).ravel()
        topic = np.searchsorted(stacked, user + rng.random(m)) - user * k
        np.clip(topic, 0, k - 1, out=topic)
        topic[noise] = k  # row k of the item CDFs is popularity alone
        query = topic + rng.random(m)
        order = np.argsort(query)  # sorted queries make searchsorted cache-friendly
        item = np.empty(m, dtype=np.int64)
        item[order] = np.searchsorted(item_cdf, query[order])
        item -= topic * n_items
        np.clip(item, 0, n_items - 1, out=item)
        _, first = np.unique(user * n_items + item, return_index=True)
        first.sort()
        user, item = user[first], item[first]
        group_start = np.searchsorted(user, np.arange(stop - start))
        rank = np.arange(user.size) - group_start[user]
        keep = rank < n_u[user]
        user, item = user[keep], item[keep]
        # Rating from the affinity relative to the user's strongest topic.
        affinity = np.einsum("ij,ij->i", theta[user], factors[item]) / theta.max(axis=1)[user]
        latent = RATING_BASE + RATING_SCALE * np.clip(affinity, 0, 1) ** RATING_POWER + rng.normal(0, 0.6, user.size)
        rating = np.clip(np.round(latent * 2) / 2, 0.5, 5.0)
        timestamp = rng.integers(_T0, _T1, user.size)
        if cfg.volume_scale < 1.0:  # dropped after every draw, so the other users' events stay as they were
            sends = active[start + user]
            user, item, rating, timestamp = user[sends], item[sends], rating[sends], timestamp[sends]
        yield {
            "user_id": (user + start + 1).astype(np.int64),
            "item_id": item_ids[item].astype(np.int64),
            "rating": rating.astype(np.float64),
            "timestamp": timestamp.astype(np.int64),
        }


def generate(
    config: SynthConfig | None = None, out: str | None = None, fmt: str = "csv", chunk_users: int = 10_000
) -> dict[str, Any]:
    """Generate a data set; write it to ``out`` (CSV with header, or Parquet) atomically.

    Returns a summary (path, rows, users, items, positive share). With ``out=None`` nothing
    is written and the summary holds the rows as a pandas DataFrame under ``"frame"``.
    """
    import pyarrow as pa

    config = config or SynthConfig()
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be csv or parquet, got {fmt!r}")
    started = time.perf_counter()
    schema = pa.schema([(c, pa.float64() if c == "rating" else pa.int64()) for c in COLUMNS])
    rows = positives = users = 0
    items_seen = np.zeros(config.catalog + 1, dtype=bool)
    frames = []
    writer = sink = None
    tmp = None
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
        tmp = f"{out}.tmp{os.getpid()}"
    try:
        for chunk in _iter_chunks(config, chunk_users):
            table = pa.table(chunk, schema=schema)
            rows += table.num_rows
            users += int(np.unique(chunk["user_id"]).size)
            positives += int((chunk["rating"] > 3.5).sum())
            items_seen[chunk["item_id"]] = True
            if out is None:
                frames.append(table)
                continue
            if writer is None:
                if fmt == "csv":
                    from pyarrow import csv

                    with open(tmp, "wb") as head:
                        head.write((",".join(COLUMNS) + "\n").encode())
                    sink = pa.OSFile(tmp, "ab")
                    options = csv.WriteOptions(include_header=False, quoting_style="none")
                    writer = csv.CSVWriter(sink, schema, write_options=options)
                else:
                    import pyarrow.parquet as pq

                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(table)
        if writer is not None:
            writer.close()
            writer = None
            if sink is not None:
                sink.close()
                sink = None
            os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if sink is not None:
            sink.close()
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
    summary: dict[str, Any] = {
        "path": out,
        "format": fmt,
        "rows": rows,
        "users": users,
        "items_with_events": int(items_seen.sum()),
        "positive_share": round(positives / max(rows, 1), 4),
        "seconds": round(time.perf_counter() - started, 2),
        "config": dataclasses.asdict(config),
    }
    if out is None:
        summary["frame"] = pa.concat_tables(frames).to_pandas() if frames else None
    return summary


def generate_log(
    config: SynthConfig | None = None, out: str = "events", log: EventLogConfig | None = None, fmt: str = "csv"
) -> dict[str, Any]:
    """Write the data set as an append-only event log ``out/dt=YYYY-MM-DD/part-00000.{csv,parquet}``.

    Event times are uniform over the ``log.days`` days ending with ``log.end_date`` (UTC); each event
    lands in its day's partition, a ``late_share`` in the next day's (a partition after ``end_date``
    when the event is of the last day). Each partition is written to a temporary name and renamed.
    """
    import datetime as dt
    import shutil

    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    config, log = config or SynthConfig(), log or EventLogConfig()
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be csv or parquet, got {fmt!r}")
    started = time.perf_counter()
    frame = generate(config, None)["frame"]
    rng = np.random.default_rng([config.seed, log.days])
    end = int(dt.datetime.combine(dt.date.fromisoformat(log.end_date), dt.time(), tzinfo=dt.UTC).timestamp()) + 86_400
    frame["timestamp"] = np.sort(rng.integers(end - log.days * 86_400, end, len(frame)))[rng.permutation(len(frame))]
    day = (frame["timestamp"].to_numpy() // 86_400) + (rng.random(len(frame)) < log.late_share)
    partitions = {}
    for d in np.unique(day):
        date = (dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat()
        part = frame[day == d].sort_values(["timestamp", "user_id"], kind="stable")
        final = os.path.join(out, f"dt={date}")
        tmp = f"{final}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        table = pa.Table.from_pandas(part, preserve_index=False)
        if fmt == "csv":
            pcsv.write_csv(table, os.path.join(tmp, "part-00000.csv"), pcsv.WriteOptions(quoting_style="none"))
        else:
            pq.write_table(table, os.path.join(tmp, "part-00000.parquet"), compression="zstd")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        partitions[date] = len(part)
    return {
        "path": out,
        "format": fmt,
        "rows": len(frame),
        "users": config.users,
        "partitions": partitions,
        "late_events": int((day > frame["timestamp"].to_numpy() // 86_400).sum()),
        "seconds": round(time.perf_counter() - started, 2),
        "config": dataclasses.asdict(config),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="Output file (.csv or .parquet), or directory with --log-days.")
    parser.add_argument(
        "--log-days",
        type=int,
        default=None,
        help="Write an event log instead: OUT/dt=YYYY-MM-DD/ partitions over this many days, with timestamps.",
    )
    parser.add_argument(
        "--log-end-date", default=EventLogConfig.end_date, help="Last day of the event log (YYYY-MM-DD)."
    )
    parser.add_argument(
        "--log-late-share",
        type=float,
        default=EventLogConfig.late_share,
        help="Share of events that arrive in the next day's partition.",
    )
    parser.add_argument(
        "--format", default=None, choices=("csv", "parquet"), help="Output format (default: from --out's suffix, csv)."
    )
    parser.add_argument("--users", type=int, default=d.users, help=f"Number of users ({d.users}).")
    parser.add_argument("--items", type=int, default=d.items, help=f"Number of items ({d.items}).")
    parser.add_argument("--interactions", type=int, default=0, help="Total rows (default: users x --mean-per-user).")
    parser.add_argument(
        "--mean-per-user", type=float, default=d.mean_per_user, help=f"Mean events per user ({d.mean_per_user})."
    )
    parser.add_argument("--topics", type=int, default=d.topics, help=f"Latent topics ({d.topics}).")
    parser.add_argument("--noise", type=float, default=d.noise, help=f"Share of popularity-only events ({d.noise}).")
    parser.add_argument("--zipf", type=float, default=d.zipf, help=f"Popularity long-tail exponent ({d.zipf}).")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"Random seed ({d.seed}).")
    parser.add_argument("--launch-items", type=int, default=0, help="Drift: new items with head popularity (0).")
    parser.add_argument("--retire-items", type=int, default=0, help="Drift: items that get no events any more (0).")
    parser.add_argument(
        "--popularity-shift", type=float, default=0.0, help="Drift: move popularity ranks by this share of items (0)."
    )
    parser.add_argument(
        "--volume-scale", type=float, default=1.0, help="Drift: the share of users that send events (1 = all)."
    )
    parser.add_argument(
        "--drift",
        default="",
        help="Drift by date, e.g. '2026-03-03:launch_items=30,retire_items=30;2026-03-04:volume_scale=0.5': "
        "with --date D, every entry dated on or before D applies (overriding the single drift flags).",
    )
    parser.add_argument("--date", default=None, help="The date YYYY-MM-DD the file stands for (picks --drift entries).")


def config_from_args(args: argparse.Namespace) -> SynthStageConfig:
    """The stage's config from the flags of :func:`add_arguments`."""
    data = SynthConfig(
        users=args.users,
        items=args.items,
        interactions=args.interactions,
        mean_per_user=args.mean_per_user,
        topics=args.topics,
        noise=args.noise,
        zipf=args.zipf,
        seed=args.seed,
        launch_items=args.launch_items,
        retire_items=args.retire_items,
        popularity_shift=args.popularity_shift,
        volume_scale=args.volume_scale,
    )
    if args.drift:
        if not args.date:
            raise ValueError("--drift needs --date (the date whose drift applies)")
        data = dataclasses.replace(data, **drift_on(parse_drift(args.drift), args.date))
    log = None
    if args.log_days is not None:
        log = EventLogConfig(args.log_days, args.log_end_date, args.log_late_share)
    fmt = args.format or ("parquet" if args.out.endswith(".parquet") else "csv")
    return SynthStageConfig(args.out, fmt, data, log)


def synth_stage(config: SynthStageConfig) -> dict[str, Any]:
    """Stage ``synth``: write the data set to ``config.out``; returns the summary (path, rows, users, ...)."""
    if config.log is not None:
        summary = generate_log(config.data, config.out, config.log, config.format)
    else:
        summary = generate(config.data, config.out, config.format)
    summary.pop("config")
    return summary
