"""Stage ``report``: the morning report of night ``D``, ``runs/dt=D/report.html``.

One self-contained HTML file (plots inline as PNG) that says whether the night was healthy: the
input's volume against the previous night and the median of the last nights, new and vanished
items, how much the lists changed (mean Jaccard per user, share of users whose top 10 changed),
how concentrated they are (coverage, Gini, share of the top 1% items), the fallback share, the
quality trend (candidate, EASE, popularity on test users, as each night logged them), the gate's
decisions and the training curves. The drift rules (:mod:`vasp_model.pipeline.drift`) flag what
is off; the flags join the run record ``runs/dt=D/run.json`` (key ``flags``), which is republished
atomically together with the report, and the report is logged to the night's MLflow run.

A missing or unreadable earlier night never fails the report: that comparison reads
"unavailable". pandas, pyarrow, matplotlib and mlflow are imported inside the functions.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import html
import io
import logging
import statistics
import time
from collections.abc import Mapping
from typing import Any

from vasp_model.core import defaults
from vasp_model.data import layout
from vasp_model.pipeline.drift import DriftConfig, evaluate, load_drift_config

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
RUN_FILE = "run.json"
CHURN_TOP = 10  # "the user's top 10 changed"
HISTORY_NIGHTS = 14  # nights in the trend plots and the gate's table
UNAVAILABLE = "unavailable"


@dataclasses.dataclass(frozen=True)
class ReportStageConfig:
    """Stage ``report``: which night, where the warehouse and MLflow are, the drift thresholds."""

    date: str
    warehouse: str = dataclasses.field(default_factory=defaults.default_warehouse)
    tracking_uri: str | None = dataclasses.field(default_factory=defaults.default_tracking_uri)  # None: no MLflow
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)
    snapshot: str | None = None  # also write the report's panels as one PNG here (a picture for docs, mail)

    def __post_init__(self) -> None:
        layout.check_date(self.date)


# -- figures of one night ------------------------------------------------------------------------


def _read_json(uri: str) -> dict[str, Any] | None:
    from vasp_model.data import storage

    try:
        return storage.read_json(uri)
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", uri, exc)
        return None


def _read_table(uri: str, columns: list[str] | None = None):
    from vasp_model.pipeline.checks import read_table

    try:
        return read_table(uri, columns=columns)
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", uri, exc)
        return None


def night_inputs(warehouse: str, date: str) -> dict[str, Any] | None:
    """Input volume and vocabulary of a night from its features partition (None: missing or unreadable)."""
    from vasp_model.data import storage

    features = layout.features_dir(warehouse, date)
    manifest = _read_json(f"{features}/{storage.MANIFEST}")
    items = _read_table(f"{features}/items", columns=["item_id"])
    if manifest is None or items is None:
        return None
    counts = manifest.get("counts", {})
    return {
        "input_rows": int(counts.get("input_rows", counts.get("used_rows", 0))),
        "users": int(counts.get("users", 0)),
        "items": int(counts.get("items", len(items))),
        "item_ids": {str(i) for i in items["item_id"]},
    }


def night_lists(warehouse: str, date: str) -> dict[str, Any] | None:
    """A night's published lists and their manifest (None: missing or unreadable)."""
    from vasp_model.data import storage

    recs_dir = layout.recommendations_dir(warehouse, date)
    manifest = _read_json(f"{recs_dir}/{storage.MANIFEST}")
    recs = _read_table(recs_dir, columns=["user_id", "rank", "item_id"])
    if manifest is None or recs is None:
        return None
    recs = recs.astype({"user_id": str, "item_id": str})
    counts = manifest.get("counts", {})
    users = counts.get("users") or recs["user_id"].nunique()
    fallback = counts.get("fallback_users")
    return {
        "recs": recs,
        "serving": manifest.get("serving") or {},
        "model_version": manifest.get("model_version"),
        "fallback_share": (fallback / users) if fallback is not None and users else None,
    }


def concentration(recs, catalog: int) -> dict[str, float]:
    """Coverage (share of the catalog in any list), Gini of the items' list counts over the catalog, and the
    share of list slots taken by the top 1% most recommended items."""
    import numpy as np

    counts = recs["item_id"].value_counts().to_numpy()
    catalog = max(catalog, counts.size)
    full = np.sort(np.concatenate([counts, np.zeros(catalog - counts.size)]))
    total = full.sum()
    if total == 0:
        return {"coverage": 0.0, "gini": 0.0, "top1pct_share": 0.0}
    ranks = np.arange(1, catalog + 1)
    gini = float((2 * ranks - catalog - 1) @ full / (catalog * total))
    top = max(1, int(np.ceil(catalog / 100)))
    return {
        "coverage": counts.size / catalog,
        "gini": gini,
        "top1pct_share": float(full[-top:].sum() / total),
    }


def churn(recs, previous) -> dict[str, Any]:
    """Per-user Jaccard of tonight's list vs the previous night's (users in both), and the share of users
    whose top 10 (as a set) changed."""
    key = ["user_id", "item_id"]
    n = int(min(recs["rank"].max(), previous["rank"].max()))
    common = recs["user_id"].drop_duplicates()
    common = common[common.isin(previous["user_id"])]
    if common.empty:
        return {}

    def overlap(k: int):
        now = recs.loc[(recs["rank"] <= k) & recs["user_id"].isin(common), key]
        before = previous.loc[(previous["rank"] <= k) & previous["user_id"].isin(common), key]
        shared = now.merge(before, on=key).groupby("user_id").size().reindex(common, fill_value=0)
        sizes = [frame.groupby("user_id").size().reindex(common, fill_value=0) for frame in (now, before)]
        return shared.to_numpy(), sizes[0].to_numpy(), sizes[1].to_numpy()

    shared, a, b = overlap(n)
    union = a + b - shared
    jaccard = (shared / union.clip(min=1)).astype(float)
    jaccard[union == 0] = 1.0
    shared10, a10, b10 = overlap(CHURN_TOP)
    changed = ~((shared10 == a10) & (shared10 == b10))
    return {
        "mean_jaccard": float(jaccard.mean()),
        "jaccards": jaccard,
        "top10_changed_share": float(changed.mean()),
        "churn_users": int(common.size),
        "churn_depth": n,
    }


def _published_before(warehouse: str, date: str, nights: int) -> list[str]:
    from vasp_model.data import storage

    try:
        dates = storage.published_dates(warehouse, "features")
    except OSError:
        return []
    return [d for d in dates if d < date][-nights:]


def _previous_day(date: str) -> str:
    return (dt.date.fromisoformat(date) - dt.timedelta(days=1)).isoformat()


def gather(config: ReportStageConfig) -> dict[str, Any]:
    """Every figure of the report of ``config.date``; comparisons that cannot be made are left out."""
    warehouse, date = config.warehouse, config.date
    tonight_in = night_inputs(warehouse, date)
    if tonight_in is None:
        raise FileNotFoundError(f"no readable features for {date} under {warehouse}: nothing to report on")
    tonight_lists = night_lists(warehouse, date)
    previous = _previous_day(date)
    previous_in = night_inputs(warehouse, previous)
    previous_lists = night_lists(warehouse, previous)

    tonight: dict[str, Any] = {k: tonight_in[k] for k in ("input_rows", "users", "items")}
    if tonight_lists is not None:
        tonight.update(concentration(tonight_lists["recs"], tonight_in["items"]))
        tonight["fallback_share"] = tonight_lists["fallback_share"]
        tonight["model_version"] = tonight_lists["model_version"]
        tonight["serving"] = tonight_lists["serving"]

    comparison: dict[str, Any] = {"previous_date": previous}
    if previous_in is not None:
        comparison["previous"] = {k: previous_in[k] for k in ("input_rows", "users", "items")}
        new = sorted(tonight_in["item_ids"] - previous_in["item_ids"])
        vanished = sorted(previous_in["item_ids"] - tonight_in["item_ids"])
        comparison |= {
            "new_items": new,
            "vanished_items": vanished,
            "new_item_share": len(new) / max(1, len(tonight_in["item_ids"])),
            "vanished_item_share": len(vanished) / max(1, len(previous_in["item_ids"])),
        }
    if tonight_lists is not None and previous_lists is not None:
        comparison |= churn(tonight_lists["recs"], previous_lists["recs"])
        prev_inputs = previous_in or {"items": 0}
        comparison["previous_coverage"] = concentration(previous_lists["recs"], prev_inputs["items"])["coverage"]
        comparison["previous_fallback_share"] = previous_lists["fallback_share"]
        comparison["previous_serving"] = previous_lists["serving"]
        comparison["model_changed"] = previous_lists["serving"] != tonight_lists["serving"]

    window = []
    for night in _published_before(warehouse, date, config.drift.drift_window):
        figures = night_inputs(warehouse, night) if night != previous else previous_in
        if figures is not None:
            window.append({"date": night, **{k: figures[k] for k in ("input_rows", "users", "items")}})
    if window:
        comparison["window"] = window
        for key in ("input_rows", "users", "items"):
            comparison[f"median_{key}"] = statistics.median(w[key] for w in window)

    return {
        "date": date,
        "tonight": tonight,
        "comparison": comparison,
        "history": night_history(warehouse, date),
        "training": night_training(warehouse, date),
        "record": _read_json(f"{layout.dataset_dir(warehouse, 'runs', date)}/{RUN_FILE}") or {},
    }


def night_history(warehouse: str, date: str) -> list[dict[str, Any]]:
    """Per night up to ``date``: test nDCG@100 of the candidate, EASE and popularity (models/dt=X/metrics.json),
    the gate's decision and what served (runs/dt=X/run.json), volume (features manifest)."""
    rows = []
    for night in [*_published_before(warehouse, date, HISTORY_NIGHTS - 1), date]:
        metrics = _read_json(f"{layout.models_dir(warehouse, night)}/metrics.json") or {}
        record = _read_json(f"{layout.dataset_dir(warehouse, 'runs', night)}/{RUN_FILE}") or {}
        inputs = night_inputs(warehouse, night) or {}
        test = metrics.get("test", {})
        promotion = record.get("promotion") or {}
        rows.append(
            {
                "date": night,
                "candidate": (test.get("vasp") or {}).get("ndcg@100"),
                "ease": (test.get("ease") or {}).get("ndcg@100"),
                "popularity": (test.get("popularity") or {}).get("ndcg@100"),
                "champion": (promotion.get("scores") or {}).get("champion"),
                "action": promotion.get("action"),
                "candidate_version": promotion.get("candidate_version"),
                "champion_after": promotion.get("champion_after"),
                "reason": promotion.get("reason"),
                "serving": (record.get("serving") or {}).get("kind"),
                "input_rows": inputs.get("input_rows"),
                "users": inputs.get("users"),
                "items": inputs.get("items"),
            }
        )
    return rows


def night_training(warehouse: str, date: str) -> dict[str, Any]:
    """The night's training: its per-epoch history, best epoch, EASE's validation level and the epoch after
    which the fit budget stopped the fit (None: it did not)."""
    models = layout.models_dir(warehouse, date)
    metrics = _read_json(f"{models}/metrics.json") or {}
    history = _read_json(f"{models}/history.json")
    validation = metrics.get("validation", {})
    return {
        "history": history if isinstance(history, list) else [],
        "best_epoch": metrics.get("best_epoch") or (_read_json(f"{models}/_manifest.json") or {}).get("best_epoch"),
        "ease_validation": (validation.get("ease") or {}).get("ndcg@100"),
        "vasp_validation": (validation.get("vasp") or {}).get("ndcg@100"),
        "budget_stopped_after": (metrics.get("timings") or {}).get("fit_budget_stopped_after_epoch"),
    }


# -- plots ---------------------------------------------------------------------------------------


def _figure(width: float = 7.5, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(facts: Mapping[str, Any]) -> str:
    version = facts["tonight"].get("model_version")
    return f"{facts['date']} · model v{version}" if version else facts["date"]


def plot_volume(facts: Mapping[str, Any]):
    history = [h for h in facts["history"] if h["input_rows"] is not None]
    fig, ax = _figure()
    dates = [h["date"][5:] for h in history]
    ax.bar(
        dates,
        [h["input_rows"] for h in history],
        color=["#c44" if h["date"] == facts["date"] else "#8ab" for h in history],
    )
    median = facts["comparison"].get("median_input_rows")
    if median:
        ax.axhline(
            median,
            color="k",
            ls="--",
            lw=1,
            label=f"median of the previous {len(facts['comparison']['window'])} nights",
        )
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Input rows per night — {_label(facts)}")
    ax.set_xlabel("night (date D)")
    ax.set_ylabel("input rows")
    ax.tick_params(axis="x", labelrotation=45)
    return fig


def plot_quality(facts: Mapping[str, Any]):
    history = facts["history"]
    lines = {
        label: ([h[key] if h[key] is not None else float("nan") for h in history], style)
        for key, label, style in (
            ("candidate", "VASP candidate", "o-"),
            ("champion", "champion (re-scored by the gate)", "s--"),
            ("ease", "EASE", "^-"),
            ("popularity", "popularity", "v:"),
        )
        if any(h[key] is not None for h in history)
    }
    if not lines:
        return None
    fig, ax = _figure()
    x = [h["date"][5:] for h in history]
    for label, (values, style) in lines.items():
        ax.plot(x, values, style, label=label)
    ax.set_title(f"Test nDCG@100 by night — {_label(facts)}")
    ax.set_xlabel("night (date D)")
    ax.set_ylabel("nDCG@100 on test users")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(fontsize=8)
    return fig


def _series(history: list[Mapping[str, Any]], key: str) -> list[float]:
    return [float(row[key]) if row.get(key) is not None else float("nan") for row in history]


def plot_training(facts: Mapping[str, Any]):
    """Training loss and validation nDCG@100 per epoch: best epoch, learning-rate changes, EASE's level and
    where the fit budget stopped the fit."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    training = facts["training"]
    history = training["history"]
    if not history:
        return None
    epochs = [int(row.get("epoch", i + 1)) for i, row in enumerate(history)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    loss_keys = [k for k in history[0] if k in ("loss", "val_loss", "kl", "focal")] or [
        k for k in history[0] if k.endswith("loss")
    ]
    for key in loss_keys:
        left.plot(epochs, _series(history, key), ".-", label=key)
    metric_key = next((k for k in history[0] if "ndcg" in k), None)
    if metric_key:
        right.plot(epochs, _series(history, metric_key), ".-", label=f"VASP {metric_key}")
    if training.get("ease_validation") is not None:
        right.axhline(training["ease_validation"], color="tab:red", ls="--", label="EASE (validation)")
    rates = _series(history, "learning_rate")
    best, stopped = training.get("best_epoch"), training.get("budget_stopped_after")
    if stopped:
        right.axvline(stopped, color="tab:orange", ls="--", label=f"fit budget: stopped after epoch {stopped:g}")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best:
            ax.axvline(best, color="tab:green", lw=1.5, label=f"best epoch {best}")
        for i in range(1, len(rates)):
            if rates[i] == rates[i] and rates[i - 1] == rates[i - 1] and rates[i] != rates[i - 1]:
                ax.axvline(epochs[i], color="tab:gray", ls=":", label=f"learning rate {rates[i - 1]:g} → {rates[i]:g}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    left.set_ylabel("loss")
    candidate = (facts["record"].get("promotion") or {}).get("candidate_version")
    label = f"{facts['date']} · candidate v{candidate}" if candidate else _label(facts)
    left.set_title(f"Training loss — {label}")
    right.set_ylabel("validation nDCG@100")
    right.set_title(f"Validation nDCG@100 — {label}")
    return fig


def plot_concentration(facts: Mapping[str, Any], recs):
    """Lorenz curve of list slots over the catalog (the diagonal: every item recommended equally)."""
    import numpy as np

    catalog = max(facts["tonight"]["items"], 1)
    counts = recs["item_id"].value_counts().to_numpy()
    full = np.sort(np.concatenate([counts, np.zeros(max(0, catalog - counts.size))]))
    cum = np.concatenate([[0], np.cumsum(full) / max(full.sum(), 1)])
    fig, ax = _figure(5.5, 4)
    ax.plot(np.linspace(0, 1, cum.size), cum, label="tonight's lists")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="equal share")
    ax.set_title(f"Concentration (Gini {facts['tonight']['gini']:.2f}) — {_label(facts)}", fontsize=10)
    ax.set_xlabel("share of catalog items (least recommended first)")
    ax.set_ylabel("share of list slots")
    ax.legend(fontsize=8)
    return fig


def plot_churn(facts: Mapping[str, Any]):
    jaccards = facts["comparison"].get("jaccards")
    if jaccards is None:
        return None
    fig, ax = _figure(5.5, 4)
    ax.hist(jaccards, bins=20, range=(0, 1), color="#8ab")
    ax.axvline(float(jaccards.mean()), color="k", ls="--", label=f"mean {jaccards.mean():.2f}")
    ax.set_title(f"List overlap vs {facts['comparison']['previous_date']} — {_label(facts)}", fontsize=10)
    ax.set_xlabel(f"Jaccard of a user's top {facts['comparison']['churn_depth']} (1 = unchanged)")
    ax.set_ylabel("users")
    ax.legend(fontsize=8)
    return fig


def figures(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The report's plots as matplotlib figures, by name (a plot without data is left out)."""
    recs = facts.get("_recs")
    made = {
        "volume": plot_volume(facts),
        "quality": plot_quality(facts),
        "training": plot_training(facts),
        "concentration": plot_concentration(facts, recs) if recs is not None else None,
        "churn": plot_churn(facts),
    }
    return {name: fig for name, fig in made.items() if fig is not None}


# -- HTML ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1150px;color:#222}
h1{margin-bottom:4px} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:8px 0 18px} td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.flag{background:#fde8e8;border-left:5px solid #c33;padding:8px 12px;margin:6px 0}
.ok{background:#e8f6ea;border-left:5px solid #3a3;padding:8px 12px}
.na{color:#999;font-style:italic} img{max-width:100%;border:1px solid #eee;margin:6px 0}
"""


def _fmt(value: Any, kind: str = "num") -> str:
    if value is None:
        return f'<span class="na">{UNAVAILABLE}</span>'
    if kind == "pct":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _serving(serving: Mapping[str, Any] | None) -> str:
    if not serving:
        return UNAVAILABLE
    name = f" ({serving['registered_model']} v{serving['version']})" if serving.get("registered_model") else ""
    return f"{serving.get('kind')}{name}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(facts: Mapping[str, Any], flags: list[dict[str, Any]], pngs: Mapping[str, str]) -> str:
    tonight, comp = facts["tonight"], facts["comparison"]
    previous = comp.get("previous") or {}
    parts = [
        f"<h1>VASP morning report — {facts['date']}</h1>",
        f'<p class="sub">served by: {html.escape(_serving(tonight.get("serving")))} · '
        f"previous night {comp['previous_date']}: "
        f"{'available' if previous else UNAVAILABLE}</p>",
        "<h2>Drift flags</h2>",
    ]
    if flags:
        parts += [
            f'<div class="flag"><b>{html.escape(f["rule"])}</b>: {html.escape(f["message"])} '
            f"(value {f['value']:g}, threshold {f['threshold']:g})</div>"
            for f in flags
        ]
    else:
        parts.append('<div class="ok">No drift rule fired.</div>')
    rows = []
    for key, label in (("input_rows", "input rows"), ("users", "users"), ("items", "items (vocabulary)")):
        rows.append([label, _fmt(tonight[key]), _fmt(previous.get(key)), _fmt(comp.get(f"median_{key}"))])
    parts += [
        "<h2>Input</h2>",
        _table(
            ["", "tonight", "previous night", f"median of the last {len(comp.get('window', [])) or ''} nights"], rows
        ),
    ]
    new, vanished = comp.get("new_items"), comp.get("vanished_items")
    parts.append(
        _table(
            ["catalog vs previous night", "items", "share", "examples"],
            [
                [
                    label,
                    _fmt(len(ids) if ids is not None else None),
                    _fmt(comp.get(share), "pct") if ids is not None else _fmt(None),
                    html.escape(", ".join(ids[:15])) + (" …" if ids and len(ids) > 15 else "") if ids else "",
                ]
                for label, ids, share in (("new", new, "new_item_share"), ("vanished", vanished, "vanished_item_share"))
            ],
        )
    )
    parts += [
        "<h2>Lists</h2>",
        _table(
            ["", "tonight", "previous night"],
            [
                [
                    f"mean Jaccard of top {comp.get('churn_depth', 'N')} per user",
                    _fmt(comp.get("mean_jaccard")),
                    "",
                ],
                [f"users whose top {CHURN_TOP} changed", _fmt(comp.get("top10_changed_share"), "pct"), ""],
                [
                    "model serving",
                    html.escape(_serving(tonight.get("serving"))),
                    html.escape(_serving(comp.get("previous_serving"))),
                ],
                ["catalog coverage", _fmt(tonight.get("coverage"), "pct"), _fmt(comp.get("previous_coverage"), "pct")],
                ["Gini of list slots over items", _fmt(tonight.get("gini")), ""],
                ["share of slots to the top 1% items", _fmt(tonight.get("top1pct_share"), "pct"), ""],
                [
                    "users served by a fallback",
                    _fmt(tonight.get("fallback_share"), "pct"),
                    _fmt(comp.get("previous_fallback_share"), "pct"),
                ],
            ],
        ),
    ]
    for name, title in (("churn", "List churn"), ("concentration", "Concentration")):
        if name in pngs:
            parts.append(f'<img alt="{title}" src="data:image/png;base64,{pngs[name]}">')
    parts += ["<h2>Input volume</h2>"]
    if "volume" in pngs:
        parts.append(f'<img alt="volume" src="data:image/png;base64,{pngs["volume"]}">')
    parts += ["<h2>Quality trend (test users)</h2>"]
    if "quality" in pngs:
        parts.append(f'<img alt="quality" src="data:image/png;base64,{pngs["quality"]}">')
    parts += [
        "<h2>The gate's decisions</h2>",
        _table(
            ["night", "decision", "candidate", "champion after", "served", "candidate nDCG@100", "EASE", "reason"],
            [
                [
                    h["date"],
                    _fmt(h["action"]),
                    _fmt(h["candidate_version"]),
                    _fmt(h["champion_after"]),
                    _fmt(h["serving"]),
                    _fmt(h["candidate"]),
                    _fmt(h["ease"]),
                    html.escape(h["reason"] or ""),
                ]
                for h in reversed(facts["history"])
            ],
        ),
        "<h2>Training</h2>",
    ]
    if "training" in pngs:
        parts.append(f'<img alt="training" src="data:image/png;base64,{pngs["training"]}">')
    else:
        parts.append(f'<p class="na">no training history for {facts["date"]}</p>')
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>VASP morning report {facts["date"]}'
        f"</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_snapshot(facts: Mapping[str, Any], flags: list[dict[str, Any]], pngs: Mapping[str, str], path: str) -> str:
    """The report at a glance as one PNG: its headline figures and flags, then its plots as rendered in the HTML."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    tonight, comp = facts["tonight"], facts["comparison"]
    lines = [
        f"VASP morning report — {facts['date']}   (previous night {comp['previous_date']}: "
        f"{'available' if comp.get('previous') else UNAVAILABLE})",
        f"input rows {tonight['input_rows']:,} · users {tonight['users']:,} · items {tonight['items']:,}"
        + (f" · median rows of last nights {comp['median_input_rows']:,.0f}" if comp.get("median_input_rows") else ""),
    ]
    if "coverage" in tonight:
        lines.append(
            f"coverage {tonight['coverage']:.1%} · Gini {tonight['gini']:.2f} · top-1% share "
            f"{tonight['top1pct_share']:.1%}"
            + (f" · mean Jaccard vs last night {comp['mean_jaccard']:.2f}" if "mean_jaccard" in comp else "")
        )
    lines += [f"FLAG {f['rule']}: {f['message']}" for f in flags] or ["no drift rule fired"]
    order = [[n] for n in ("training",) if n in pngs] + [
        row for row in (["volume", "quality"], ["churn", "concentration"]) if any(n in pngs for n in row)
    ]
    fig = plt.figure(figsize=(12, 1.2 + 0.3 * len(lines) + 4.2 * len(order)))
    grid = fig.add_gridspec(1 + len(order), 2, height_ratios=[0.3 * len(lines) + 0.4] + [4.2] * len(order))
    head = fig.add_subplot(grid[0, :])
    head.axis("off")
    for i, line in enumerate(lines):
        color = "#b22" if line.startswith("FLAG") else "#222"
        head.text(
            0,
            1 - i / len(lines),
            line,
            va="top",
            fontsize=12 if i == 0 else 10,
            color=color,
            weight="bold" if i == 0 else None,
        )
    for r, row in enumerate(order, start=1):
        for c, name in enumerate(row):
            if name not in pngs:
                continue
            ax = fig.add_subplot(grid[r, :] if len(row) == 1 else grid[r, c])
            ax.imshow(mpimg.imread(io.BytesIO(base64.b64decode(pngs[name])), format="png"))
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the stage -----------------------------------------------------------------------------------


def build_report(config: ReportStageConfig) -> tuple[str, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(HTML, flags, figures, facts) of the night ``config.date``."""
    facts = gather(config)
    lists = night_lists(config.warehouse, config.date)
    facts["_recs"] = lists["recs"] if lists is not None else None
    flags = evaluate(facts["tonight"], facts["comparison"], config.drift) if "coverage" in facts["tonight"] else []
    figs = figures(facts)
    pngs = {name: _png(fig) for name, fig in figs.items()}
    if config.snapshot:
        write_snapshot(facts, flags, pngs, config.snapshot)
    return render_html(facts, flags, pngs), flags, figs, facts


def _publish(config: ReportStageConfig, text: str, flags: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Republish ``runs/dt=D``: its files as they were, ``run.json`` with ``flags`` and ``report``, and the report."""
    from pyarrow import fs as pafs

    from vasp_model.data import storage

    runs = layout.dataset_dir(config.warehouse, "runs", config.date)
    record = _read_json(f"{runs}/{RUN_FILE}") or {"date": config.date}
    record |= {"flags": flags, "report": summary}
    staging = storage.staging_dir(runs)
    try:
        filesystem, path = storage.resolve(runs)
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            for info in filesystem.get_file_info(pafs.FileSelector(path)):
                if info.type == pafs.FileType.File and info.base_name not in (
                    RUN_FILE,
                    REPORT_FILE,
                    storage.SUCCESS,
                    storage.MANIFEST,
                ):
                    filesystem.copy_file(info.path, f"{storage.resolve(staging)[1]}/{info.base_name}")
        storage.write_json(f"{staging}/{RUN_FILE}", record)
        filesystem, report_path = storage.resolve(f"{staging}/{REPORT_FILE}")
        with filesystem.open_output_stream(report_path) as out:
            out.write(text.encode("utf-8"))
        storage.publish(staging, runs)
    except BaseException:
        storage.discard(staging)
        raise
    return f"{runs}/{REPORT_FILE}"


def _night_run_id(client, date: str) -> str | None:
    """The MLflow run of the night's training (run name ``vasp-D``, newest first)."""
    experiment = client.get_experiment_by_name("vasp")
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.date = '{date}' and attributes.run_name = 'vasp-{date}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_to_mlflow(tracking_uri: str, date: str, report_path: str, figs: Mapping[str, Any], flags: list) -> str | None:
    """Log the report (and its plots) to the night's MLflow run; returns the run id (None: no such run)."""
    from vasp_model.data import storage
    from vasp_model.mlops.registry import client_for

    client = client_for(tracking_uri)
    run_id = _night_run_id(client, date)
    if run_id is None:
        log.warning("no MLflow run vasp-%s: the report is not logged to MLflow", date)
        return None
    client.log_artifact(run_id, storage.local_path(report_path), artifact_path="report")
    for name, fig in figs.items():
        client.log_figure(run_id, fig, f"report/{name}.png")
    client.set_tag(run_id, "drift_flags", ",".join(f["rule"] for f in flags) or "none")
    return run_id


def report_stage(config: ReportStageConfig) -> dict[str, Any]:
    """Stage ``report``: write ``runs/dt=D/report.html``, add the flags to ``run.json``, log to MLflow.

    Returns ``{"date", "report", "flags", "seconds", "mlflow_run_id", "previous"}``.
    """
    import matplotlib.pyplot as plt

    started = time.perf_counter()
    text, flags, figs, facts = build_report(config)
    summary = {
        "previous": "available" if facts["comparison"].get("previous") else UNAVAILABLE,
        "rules": [f["rule"] for f in flags],
    }
    path = _publish(config, text, flags, summary)
    run_id = None
    if config.tracking_uri:
        try:
            run_id = log_to_mlflow(config.tracking_uri, config.date, path, figs, flags)
        except Exception as exc:  # the report is published; MLflow being unreachable must not fail the night
            log.warning("could not log the report to MLflow: %s", exc)
    for fig in figs.values():
        plt.close(fig)
    seconds = round(time.perf_counter() - started, 2)
    for flag in flags:
        log.warning("drift on %s: %s: %s", config.date, flag["rule"], flag["message"])
    log.info("morning report of %s: %s (%d flags, %.1f s)", config.date, path, len(flags), seconds)
    return {
        "date": config.date,
        "report": path,
        "flags": flags,
        "previous": summary["previous"],
        "seconds": seconds,
        "mlflow_run_id": run_id,
    }


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vasp_model.core.args import add_tracking_argument, add_warehouse_argument

    parser.add_argument("--date", required=True, help="The night D (YYYY-MM-DD) to report on.")
    add_warehouse_argument(parser)
    add_tracking_argument(parser)
    parser.add_argument("--no-mlflow", action="store_true", help="Do not log the report to MLflow.")
    parser.add_argument(
        "--snapshot", default=None, help="Also write the report's figures and plots as one PNG to this path."
    )


def config_from_args(args: argparse.Namespace) -> ReportStageConfig:
    tracking = None if args.no_mlflow else (args.tracking_uri or defaults.default_tracking_uri())
    return ReportStageConfig(
        date=layout.check_date(args.date),
        warehouse=args.warehouse or defaults.default_warehouse(),
        tracking_uri=tracking,
        drift=load_drift_config(),
        snapshot=args.snapshot,
    )
