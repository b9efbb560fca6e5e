"""What a training's MLflow run records about where it came from.

:func:`run_tags`: the package version, the git commit when known (``VASP_GIT_COMMIT``, else the
checkout the package runs from) and, under Airflow, the task's dag id, run id and try number
(Airflow exports them to the task's environment as ``AIRFLOW_CTX_*``).
:func:`log_datasets`: the input and the features partition as MLflow datasets of the active run,
from the partition's lineage (:func:`vasp_model.data.features.lineage`).

mlflow is imported inside functions (no import-time cost or side effects).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
from collections.abc import Mapping

log = logging.getLogger(__name__)

PACKAGE = "vasp-pipeline"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own key: its UI links the run to the commit
AIRFLOW_TAGS = {  # run tag -> the variable Airflow's task runner exports to the task's environment
    "airflow.dag_id": "AIRFLOW_CTX_DAG_ID",
    "airflow.run_id": "AIRFLOW_CTX_DAG_RUN_ID",
    "airflow.try_number": "AIRFLOW_CTX_TRY_NUMBER",
}
DIGEST_CHARS = 36  # MLflow keeps at most this many characters of a dataset digest
_SCHEMES = {"file": "local", "s3a": "s3", "s3n": "s3"}  # URI scheme -> MLflow dataset source type


def git_commit() -> str | None:
    """``VASP_GIT_COMMIT``, else HEAD of the git checkout whose root holds this package, else None."""
    if os.environ.get("VASP_GIT_COMMIT"):
        return os.environ["VASP_GIT_COMMIT"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    # an installed copy inside some other checkout (a virtualenv in a repository) is not that commit
    return out[1] if len(out) == 2 and os.path.realpath(out[0]) == os.path.realpath(root) else None


def run_tags() -> dict[str, str]:
    """The tags naming the code and the scheduler run behind a training run (see module docstring)."""
    tags = {"vasp.package_version": importlib.metadata.version(PACKAGE)}
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    tags.update({tag: os.environ[var] for tag, var in AIRFLOW_TAGS.items() if os.environ.get(var)})
    return tags


def dataset_source(uri: str):
    """The MLflow dataset source of a path or URI (None for a scheme MLflow has no source type for)."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.exceptions import MlflowException

    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    try:
        return get_dataset_source_from_json(json.dumps({"uri": uri}), source_type=_SCHEMES.get(scheme, scheme))
    except MlflowException:
        return None


def log_datasets(lineage: Mapping[str, str]) -> None:
    """Log the input (its URI, its digest) and the features partition (its directory, its digest) as
    datasets of the active MLflow run, context ``training``; the full digests go in the inputs' tags."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    for name, uri, digest in (
        ("input", lineage["input_uri"], lineage["input_digest"]),
        ("features", lineage["features_dir"], lineage["features_digest"]),
    ):
        source = dataset_source(uri)
        if source is None:
            log.warning("no MLflow dataset source for %s: the run records it in its tags only", uri)
            continue
        dataset = MetaDataset(source, name=name, digest=digest[:DIGEST_CHARS])
        mlflow.log_input(dataset, context="training", tags={"sha256": digest})
