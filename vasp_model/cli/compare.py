"""``vasp compare A B [A2 B2 ...]``: two trainings' scored users compared, with paired-bootstrap intervals.

Each side is a ``models/dt=D`` directory of ``vasp train`` (or its ``per_user_metrics.parquet``), an MLflow
run, ``runs:/RUN_ID``, or a registered version, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, whose
training run's logged table is read. Several pairs (e.g. one per user split) are pooled into one
interval. ``--model-b ease`` compares the served model with the EASE baseline of the same run. A side's
model is ``--model`` (``--model-b``), else what the side names: ``ease`` for a version of the EASE
fallback's registered model (its run's logged model ``ease``), ``vasp`` otherwise.
"""

from __future__ import annotations

import argparse
import json

from vasp_model.core.args import add_tracking_argument
from vasp_model.evaluation.bootstrap import RESAMPLES, SEED
from vasp_model.evaluation.metrics import ACCURACY_KEYS

HELP = "Compare two trainings' scored users: A − B per metric with paired-bootstrap intervals."
RUN_PREFIX = "runs:/"
MODEL_PREFIX = "models:/"
VASP_MODEL, EASE_MODEL = "vasp", "ease"  # the per-user table's model names of the served VASP and of EASE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="A B",
        help="Pairs of runs: a models/dt=D directory, its per_user_metrics.parquet, runs:/RUN_ID or a registered "
        "version, models:/NAME/VERSION or models:/NAME@ALIAS (its training run; MLflow).",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="A's model: vasp, ease, popularity, ... (default: ease for a version of the EASE fallback, else vasp).",
    )
    parser.add_argument("--model-b", default=None, help="B's model (default: --model, else as for A).")
    parser.add_argument(
        "--split",
        default="test",
        help="Whose users: test (default), validation, or given (a build with --test-input).",
    )
    parser.add_argument(
        "--metrics",
        default=",".join(ACCURACY_KEYS),
        help=f"Comma-separated metrics (default {','.join(ACCURACY_KEYS)}).",
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"Bootstrap resamples (default {RESAMPLES}).")
    parser.add_argument("--seed", type=int, default=SEED, help=f"Bootstrap seed (default {SEED}).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    add_tracking_argument(parser)


def read_table(ref: str, tracking_uri: str | None):
    """``(the per-user table of ref, the model ref names)``: a path or ``runs:/RUN_ID`` (``vasp``), or
    ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` (the table of the training run of that registered
    version, read from the tracking server; :func:`served_model`)."""
    from vasp_model.data.layout import PER_USER_METRICS
    from vasp_model.evaluation.compare import read_per_user

    if not ref.startswith((RUN_PREFIX, MODEL_PREFIX)):
        return read_per_user(ref), VASP_MODEL
    from mlflow.exceptions import MlflowException

    from vasp_model.core.settings import build_config
    from vasp_model.mlops.registry import client_for, resolve_version
    from vasp_model.mlops.tracking import TrackingConfig, logged_per_user

    uri = build_config(TrackingConfig, {"tracking_uri": tracking_uri}).tracking_uri
    client = client_for(uri)
    try:
        if ref.startswith(RUN_PREFIX):
            run_id, model = ref[len(RUN_PREFIX) :].strip("/"), VASP_MODEL
        else:
            version = resolve_version(client, ref)
            run_id, model = version.run_id, served_model(client, version)
        if not run_id:
            raise FileNotFoundError("the version records no training run")
        return logged_per_user(client, run_id), model
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(f"no {PER_USER_METRICS} in {ref} at {uri}: {first}") from exc


def served_model(client, version) -> str:
    """The per-user table's model a registered ``version`` serves: ``ease`` when it is its training run's
    logged EASE (the EASE fallback's versions), else ``vasp``."""
    from vasp_model.mlops.registry import EASE_NAME_IN_RUN, logged_model_name

    return EASE_MODEL if logged_model_name(client, version) == EASE_NAME_IN_RUN else VASP_MODEL


def run(args: argparse.Namespace) -> int:
    from vasp_model.evaluation.compare import compare, side

    if len(args.runs) % 2:
        raise ValueError(f"runs come in pairs (A B [A2 B2 ...]), got {len(args.runs)}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise ValueError("--metrics names no metric")
    tables = {ref: read_table(ref, args.tracking_uri) for ref in dict.fromkeys(args.runs)}  # each run read once
    a_names, b_names = args.runs[::2], args.runs[1::2]
    model_a = _side_model(args.model, a_names, tables, "A")
    model_b = _side_model(args.model_b or args.model, b_names, tables, "B")
    pairs = [
        (side(tables[a][0], model_a, args.split, metrics, a), side(tables[b][0], model_b, args.split, metrics, b))
        for a, b in zip(a_names, b_names, strict=True)
    ]
    result = compare(pairs, metrics, args.resamples, args.seed)
    if args.json:
        print(json.dumps({"a": a_names, "b": b_names, "model_a": model_a, "model_b": model_b, **result.to_dict()}))
        return 0
    confidence = next(iter(result.differences.values())).confidence
    print(f"A: {model_a} of {', '.join(a_names)}")
    print(f"B: {model_b} of {', '.join(b_names)}")
    left_out = (
        f"; left out: {result.only_a} only in A, {result.only_b} only in B" if result.only_a or result.only_b else ""
    )
    print(f"{args.split} users paired: {result.paired_users} over {len(pairs)} pair(s){left_out}")
    print(f"{'metric':<14}{'A':>9}{'B':>9}{'A − B':>10}  {confidence:.0%} interval     relative")
    for m, d in result.differences.items():
        print(
            f"{m:<14}{result.means_a[m]:>9.4f}{result.means_b[m]:>9.4f}{d.diff:>+10.4f}  "
            f"[{d.low:+.4f}, {d.high:+.4f}]  {d.relative:+.1%}"
        )
    return 0


def _side_model(asked: str | None, refs, tables, label: str) -> str:
    """The model one side's runs are read as: ``asked``, else the one model they all name."""
    if asked:
        return asked
    named = sorted({tables[ref][1] for ref in refs})
    if len(named) > 1:
        raise ValueError(f"{label}'s runs name different models ({', '.join(named)}): say which with --model/--model-b")
    return named[0]
