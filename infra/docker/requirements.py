"""Print the pinned requirements of one image role, derived from setup.py's STACK (the one place pins live).

    python infra/docker/requirements.py airflow     # everything (Airflow image: scheduler/worker/driver)
    python infra/docker/requirements.py spark       # no Airflow (Spark master/worker/executors, mlflow server)
    python infra/docker/requirements.py train-gpu   # tensorflow-cpu swapped for tensorflow[and-cuda] (same version)

The images install the package wheel with ``--no-deps`` and these requirements, so a role never
drifts from setup.py. Reads setup.py with ``ast``: nothing is executed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROLES = ("airflow", "spark", "train-gpu")
EXTRA = [
    "psycopg2-binary>=2.9,<3",  # MLflow / Airflow metadata on PostgreSQL
    "Flask-WTF>=1.2,<2",  # `mlflow server --app-name basic-auth` (what mlflow[auth] adds)
]
# Airflow 3 also opens an async engine on its metadata DB: postgresql -> asyncpg (the official image has it)
AIRFLOW_EXTRA = ["asyncpg>=0.29,<1"]


def setup_lists(setup_py: str | Path | None = None) -> dict[str, list[str]]:
    """Top-level list assignments of setup.py (STACK, DEV) as {name: [requirement, ...]}."""
    path = Path(setup_py) if setup_py else Path(__file__).resolve().parents[2] / "setup.py"
    tree = ast.parse(path.read_text())
    out: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = [ast.literal_eval(elt) for elt in node.value.elts]
    return out


def pins(setup_py: str | Path | None = None) -> dict[str, str]:
    """{package: version} for every ``==`` pin in STACK."""
    result = {}
    for req in setup_lists(setup_py)["STACK"]:
        if "==" in req:
            name, version = req.split("==", 1)
            result[name.strip().lower()] = version.strip()
    return result


def requirements(role: str, setup_py: str | Path | None = None) -> list[str]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    stack = setup_lists(setup_py)["STACK"]
    out = []
    for req in stack:
        name = req.split("==")[0].split(">")[0].split("<")[0].strip().lower()
        if role == "spark" and (name.startswith("apache-airflow") or name == "pyspark-client"):
            continue
        if role == "train-gpu" and name == "tensorflow-cpu":
            req = req.replace("tensorflow-cpu", "tensorflow[and-cuda]", 1)
        out.append(req)
    return out + EXTRA + ([] if role == "spark" else AIRFLOW_EXTRA)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ROLES:
        print(f"usage: requirements.py {{{'|'.join(ROLES)}}}", file=sys.stderr)
        return 2
    print("\n".join(requirements(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
