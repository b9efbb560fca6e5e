"""Quality benchmark: VASP, EASE and popularity on every data set × user split, with paired intervals.

For each data set present and each split seed, this builds the features with the Spark job
(``vasp build --seed S``, one logical date per split) and trains with the product's own stage
(``vasp train --no-tracking``: ``models/dt=D/metrics.json`` and ``per_user_metrics.parquet``). It
then prints one table: per data set, each model's nDCG@100 / Recall@20 / Recall@50 as the mean
over splits, and the paired-bootstrap 95% interval of VASP − EASE over the test users of all
splits pooled. Finished (data set, split) pairs are kept under ``--work`` and not rerun, so data
sets can be run separately and the table assembled at the end; ``--readme`` writes it into the
README between the ``quality`` markers.

    .venv/bin/python bench/quality.py                                   # every data set present
    .venv/bin/python bench/quality.py --datasets ml-100k --splits 3     # one data set
    .venv/bin/python bench/quality.py --datasets citeulike-a lastfm amazon-games-pruned  # whole wide catalogs
    .venv/bin/python bench/quality.py --report-only --readme            # table from finished runs
    .venv/bin/python bench/quality.py --datasets ml-1m --config tuned   # the config `vasp tune` chose

``--config tuned`` trains each split with the config ``vasp tune`` chose last at or before the split's
date in that data set's warehouse (``--work``/NAME/tuning: run ``vasp tune --warehouse WORK/NAME`` first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, REPO)

from vasp_model.evaluation.metrics import UNBLENDED  # noqa: E402

SYNTHETIC = "synthetic"
DENSE = ["--ease-prune-above", "1000000"]  # the dense Neural EASE kernel at any width
# name -> (input under the data root or SYNTHETIC, extra `vasp build` args, extra `vasp train` args, splits)
DATASETS = {
    "ml-1m": ("ml-1m/ratings.csv", [], [], 5),
    "ml-100k": ("ml-100k/u.data", [], [], 3),
    "lastfm-4k": ("hetrec2011-lastfm-2k/user_artists.dat", [], ["--max-items", "4000"], 3),
    # a few hundred users, as a small team's first nights are (see SAMPLED_USERS)
    "ml-1m-600": ("ml-1m/ratings.csv", [], [], 5),
    SYNTHETIC: (SYNTHETIC, [], [], 3),
    # whole catalogs of 15k-24k items, up to an hour a split on the 2-core machine, so run only when named:
    # with the dense Neural EASE kernel (the cpu preset would prune catalogs this wide) ...
    "citeulike-a": ("citeulike-a/users.dat", [], DENSE, 1),
    "lastfm": ("hetrec2011-lastfm-2k/user_artists.dat", [], DENSE, 1),
    "amazon-games": ("amazon-games-sasrec/Video.txt", ["--format", "user-item-seq"], DENSE, 1),
    # ... and pruned to each item's 512 strongest targets, as the cpu preset trains them
    "citeulike-a-pruned": ("citeulike-a/users.dat", [], ["--ease-neighbours", "512"], 1),
    "lastfm-pruned": ("hetrec2011-lastfm-2k/user_artists.dat", [], ["--ease-neighbours", "512"], 1),
    "amazon-games-pruned": (
        "amazon-games-sasrec/Video.txt",
        ["--format", "user-item-seq"],
        ["--ease-neighbours", "512"],
        1,
    ),
}
# data sets whose split S reads only this many users of the input, drawn with seed S (input: a CSV with user_id)
SAMPLED_USERS = {"ml-1m-600": 600}
WIDE = ("citeulike-a", "lastfm", "amazon-games", "citeulike-a-pruned", "lastfm-pruned", "amazon-games-pruned")
MODELS = ("vasp", "ease", "popularity")
ALONE = UNBLENDED  # the network without its blend with EASE, where vasp train scored it
SHOWN = ("ndcg@100", "recall@20", "recall@50")


def vasp_command(*args: str) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "vasp"), *args]


def run_measured(cmd: list[str], log: str) -> float:
    """Run ``cmd`` (output to ``log``); returns its peak RSS in GiB (the largest of it and the children it
    waited for: not a Spark JVM, which pyspark leaves unreaped)."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    with open(log, "a") as out:
        _, status, usage = os.wait4(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT).pid, 0)
    if exit_code := os.waitstatus_to_exitcode(status):
        raise subprocess.CalledProcessError(exit_code, cmd)
    return usage.ru_maxrss / 2**20  # KiB on Linux


def recorded_peak_gib(metrics: dict) -> float:
    """The run's peak resident set as it recorded it by phase (``peak_resident_bytes``), GiB (0 if none): each
    phase restarts the kernel's high-water mark, so the exit status's ``ru_maxrss`` holds only the last one's."""
    peaks = metrics.get("peak_resident_bytes")
    values = list(peaks.values()) if isinstance(peaks, dict) else [peaks or 0]
    return max(values, default=0) / 2**30


def sample_users(source: str, n_users: int, seed: int, out_dir: str) -> str:
    """A CSV under ``out_dir`` of the rows of ``n_users`` users of ``source`` (a CSV with ``user_id``) drawn
    with ``seed``; returns its path. Kept beside the split's warehouse, never in the repository."""
    import numpy as np
    import pandas as pd

    path = os.path.join(out_dir, f"users-{n_users}-{seed}.csv")
    if not os.path.exists(path):
        rows = pd.read_csv(source)
        users = np.random.default_rng(seed).choice(rows["user_id"].unique(), size=n_users, replace=False)
        rows[rows["user_id"].isin(users)].to_csv(f"{path}.tmp", index=False)
        os.replace(f"{path}.tmp", path)  # a run stopped halfway leaves no partial sample behind
    return path


def run_split(
    name: str, split: int, data_root: str, work: str, preset: str, backend: str, config: str = "preset"
) -> dict:
    """Build and train one (data set, split) unless done with this preset, config and backend; returns its
    result (metrics + per-user path)."""
    from vasp_model.data import layout, storage

    source, build_args, train_args, _ = DATASETS[name]
    warehouse = os.path.join(work, name)
    date = f"2026-01-{split + 1:02d}"
    done = os.path.join(warehouse, f"result-{split}.json")
    if os.path.exists(done):
        with open(done) as fh:
            result = json.load(fh)
        done_with = (result.get("preset", "cpu"), result.get("config", "preset"), result.get("backend", "jax"))
        if done_with == (preset, config, backend):
            return result
    os.makedirs(warehouse, exist_ok=True)
    log = os.path.join(warehouse, f"split-{split}.log")
    if source == SYNTHETIC:
        source = os.path.join(warehouse, f"events-{split}.csv")
        run_measured(vasp_command("synth", "--out", source, "--seed", str(split)), log)
    elif name in SAMPLED_USERS:
        source = sample_users(os.path.join(data_root, source), SAMPLED_USERS[name], split, warehouse)
    else:
        source = os.path.join(data_root, source)
    if not storage.is_published(layout.features_dir(warehouse, date)):
        run_measured(
            vasp_command(
                "build", "--input", source, "--warehouse", warehouse, "--date", date, "--seed", str(split), *build_args
            ),
            log,
        )
    start = time.perf_counter()
    train = ["train", "--warehouse", warehouse, "--date", date, "--preset", preset, "--config", config]
    train += ["--backend", backend]
    train_rss = run_measured(vasp_command(*train, "--no-tracking", "--quiet", *train_args), log)
    models = storage.local_path(layout.models_dir(warehouse, date))
    with open(os.path.join(models, "metrics.json")) as fh:
        metrics = json.load(fh)
    per_user = os.path.join(warehouse, f"result-{split}-per_user.parquet")  # kept: a later run may replace models/
    shutil.copyfile(os.path.join(models, "per_user_metrics.parquet"), per_user)
    result = {
        "data": name,
        "split": split,
        "date": date,
        "preset": preset,
        "config": config,
        "backend": backend,
        "test": {m: {k: metrics["test"][m][k] for k in SHOWN} for m in (*MODELS, ALONE) if m in metrics["test"]},
        "users": metrics["test"]["vasp"]["users"],
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_peak_rss_gib": round(max(train_rss, recorded_peak_gib(metrics)), 2),
        "per_user": per_user,
    }
    with open(done, "w") as fh:
        json.dump(result, fh, indent=1)
    return result


def summarize(name: str, results: list[dict]) -> dict:
    """Means over splits per model, and the pooled paired interval of VASP − EASE per metric (and of the
    network alone − EASE, when every split reports it)."""
    import numpy as np

    from vasp_model.evaluation.compare import compare, read_per_user, side

    models = [m for m in (*MODELS, ALONE) if all(m in r["test"] for r in results)]
    means = {m: {k: float(np.mean([r["test"][m][k] for r in results])) for k in SHOWN} for m in models}
    tables = [(read_per_user(r["per_user"]), r["per_user"]) for r in results]

    def minus_ease(model: str) -> dict:
        pairs = [(side(t, model, "test", SHOWN, name), side(t, "ease", "test", SHOWN, name)) for t, name in tables]
        differences = compare(pairs, SHOWN).differences
        return {k: differences[k].to_dict() for k in SHOWN}

    intervals = minus_ease("vasp")
    per_split = [r["test"]["vasp"]["ndcg@100"] / r["test"]["ease"]["ndcg@100"] - 1 for r in results]
    return {
        "data": name,
        "splits": len(results),
        "users": int(sum(r["users"] for r in results)),
        "means": means,
        "intervals": intervals,
        "alone_intervals": minus_ease(ALONE) if ALONE in models else None,
        "vasp_vs_ease_per_split": per_split,
        "train_minutes": [round(r["train_seconds"] / 60, 1) for r in results],
        "train_peak_rss_gib": [r.get("train_peak_rss_gib") for r in results],
    }


def table(summaries: list[dict]) -> str:
    """The Markdown table of :func:`summarize` results."""
    lines = [
        "| data (splits, pooled test users) | model | nDCG@100 | Recall@20 | Recall@50 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        label = f"{s['data']} ({s['splits']}, {s['users']})"
        for m in ("vasp", ALONE, "ease", "popularity"):
            if m in s["means"]:
                cells = " | ".join(f"{s['means'][m][k]:.4f}" for k in SHOWN)
                lines.append(f"| {label} | {'vasp alone (no blend)' if m == ALONE else m} | {cells} |")
                label = ""
        for name, intervals in (("VASP", s["intervals"]), ("VASP alone", s.get("alone_intervals"))):
            if intervals:
                diffs = [f"{iv['diff']:+.4f} [{iv['low']:+.4f}, {iv['high']:+.4f}]" for iv in map(intervals.get, SHOWN)]
                lines.append(f"| | {name} − EASE (95% CI) | {' | '.join(diffs)} |")
        per_split = ", ".join(f"{100 * x:+.1f}%" for x in s["vasp_vs_ease_per_split"])
        lines.append(f"| | VASP vs EASE nDCG@100 per split | {per_split} | | |")
        if s["data"] in WIDE:
            rss = ", ".join("–" if g is None else f"{g:.1f}" for g in s["train_peak_rss_gib"])
            minutes = ", ".join(f"{m:.1f}" for m in s["train_minutes"])
            lines.append(f"| | `vasp train` minutes; peak RSS GiB, per split | {minutes}; {rss} | | |")
    return "\n".join(lines)


def write_readme(text: str, readme: str, section: str = "quality") -> None:
    """Replace what lies between the README's ``<!-- section:begin -->`` and ``<!-- section:end -->``."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    with open(readme) as fh:
        content = fh.read()
    if begin not in content or end not in content:
        raise ValueError(f"{readme} has no {begin} ... {end} section")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(readme, "w") as fh:
        fh.write(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"), help="Root of the data sets.")
    parser.add_argument("--work", default="/tmp/vasp_bench_quality", help="Warehouses and finished results.")
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=[name for name in DATASETS if name not in WIDE],
        help=f"Data sets (default: all present but the whole wide catalogs, {', '.join(WIDE)}).",
    )
    parser.add_argument("--splits", type=int, default=None, help="Splits per data set (default: the data set's own).")
    parser.add_argument("--preset", default="cpu", help="Training preset.")
    parser.add_argument(
        "--config",
        choices=("preset", "tuned"),
        default="preset",
        help="Train with --preset, or with the config `vasp tune` chose in the data set's warehouse.",
    )
    parser.add_argument(
        "--backend", default="tensorflow", help="Keras backend of the trainings (default: the product's)."
    )
    parser.add_argument("--report-only", action="store_true", help="Only tabulate finished runs.")
    parser.add_argument("--readme", action="store_true", help="Write the table into README.md.")
    parser.add_argument("--json", default=None, help="Also write the summaries to this JSON file.")
    args = parser.parse_args(argv)

    summaries = []
    for name in args.datasets:
        if name not in DATASETS:
            parser.error(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
        source, _, _, default_splits = DATASETS[name]
        if source != SYNTHETIC and not os.path.exists(os.path.join(args.data, source)):
            print(f"skip {name}: {os.path.join(args.data, source)} not found", file=sys.stderr)
            continue
        results = []
        for split in range(args.splits or default_splits):
            done = os.path.join(args.work, name, f"result-{split}.json")
            if args.report_only:  # as finished, whatever preset and backend they were trained with
                if os.path.exists(done):
                    with open(done) as fh:
                        results.append(json.load(fh))
                continue
            results.append(run_split(name, split, args.data, args.work, args.preset, args.backend, args.config))
        if results:
            summaries.append(summarize(name, results))
    text = table(summaries)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summaries, fh, indent=1)
    if args.readme:  # the wide catalogs have a table of their own
        for section, wide in (("quality", False), ("quality-wide", True)):
            group = [s for s in summaries if (s["data"] in WIDE) == wide]
            if group:
                write_readme(table(group), os.path.join(REPO, "README.md"), section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
