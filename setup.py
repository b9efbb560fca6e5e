"""Installable package `vasp-pipeline`: the nightly VASP recommender pipeline.

Installs `vasp_model` and the Spark jobs of `jobs/` as `vasp_jobs` (the `dags/` folder is not a
package: Airflow reads it from its DAG folder). The default install is everything `make run`
needs (Airflow, Spark, training, MLflow); the extras name each role's share of the stack, and
add what the default lacks:

    pip install .                    # the whole nightly pipeline (`vasp run`, every subcommand)
    pip install '.[airflow]'         # the scheduler's share: Airflow + Spark + training
    pip install '.[spark]'           # Spark jobs and executors (they load trained models)
    pip install '.[train]'           # training, MLflow tracking and the registry
    pip install '.[postgres]'        # + PostgreSQL drivers for Airflow's and MLflow's metadata
    pip install -e '.[dev]'          # + the test and lint tools (`make test`)
"""

from setuptools import find_packages, setup

# The one place the stack is pinned (see ../shared/STACK.md for why these versions);
# infra/docker/requirements.py derives the images' requirement sets from this list.
STACK = [
    "apache-airflow==3.3.2",
    "apache-airflow-providers-apache-spark==6.3.4",
    "apache-airflow-providers-smtp==3.2.0",  # alert mail (SmtpNotifier)
    "pyspark==4.2.0",
    "pyspark-client==4.2.0",  # pulled in by the Spark provider; must equal pyspark
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "mlflow==3.17.2",
    "pyarrow==25.0.1",
    "scipy==1.17.1",
    "pandas==2.3.3",
    "numpy>=2,<3",
    "PyYAML>=6,<7",
    "matplotlib>=3.9,<4",
    "optuna>=4,<6",  # `vasp tune`: TPE search with Hyperband pruning
    "numba==0.68.0",  # the host's column-tiled product of sparse rows with Neural EASE / EASE kernels
]

POSTGRES = [
    "psycopg2-binary>=2.9,<3",  # MLflow server / Airflow metadata on PostgreSQL
    "asyncpg>=0.29,<1",  # Airflow 3's async engine on a PostgreSQL metadata DB
]

SERVER = [
    "Flask-WTF>=1.2,<2",  # `mlflow server --app-name basic-auth` (what mlflow[auth] adds)
]

DEV = [
    "pytest>=8,<10",
    "pytest-xdist>=3.6,<4",  # `make test` runs the suite in two worker processes
    "ruff==0.17.5",
    "duckdb>=1.1,<3",
    "jax[cpu]>=0.7,<0.13",  # second Keras backend for the cross-backend test
    "aiosmtpd>=1.4,<2",  # a real SMTP server on 127.0.0.1 for the alerting tests
    "moto[server]>=5,<6",  # a local S3-compatible server for the object-store tests
    "s3fs>=2024.2",  # those tests' view of the bucket (fsspec)
]


def _stack(*names: str) -> list[str]:
    """The STACK entries of the named distributions."""
    return [req for req in STACK if req.split("=")[0].split(">")[0].split("<")[0].lower() in names]


CORE = _stack("pyarrow", "scipy", "pandas", "numpy", "pyyaml", "numba")
TRAIN = _stack("tensorflow-cpu", "keras", "mlflow", "matplotlib", "optuna")
SPARK = _stack("pyspark") + TRAIN  # executors load the trained model; the driver resolves it in MLflow
AIRFLOW = (
    _stack("apache-airflow", "apache-airflow-providers-apache-spark", "apache-airflow-providers-smtp", "pyspark-client")
    + SPARK
)

setup(
    name="vasp-pipeline",
    version="0.1.0",
    description="Nightly VASP recommender pipeline: Spark features, Keras 3 VASP, MLflow registry, Airflow DAG",
    python_requires=">=3.11",
    packages=find_packages(include=["vasp_model", "vasp_model.*"]) + ["vasp_jobs", "vasp_jobs.common"],
    package_dir={"vasp_jobs": "jobs"},
    install_requires=CORE + AIRFLOW,
    extras_require={
        "airflow": AIRFLOW,
        "spark": SPARK,
        "train": TRAIN,
        "postgres": POSTGRES,
        "server": POSTGRES + SERVER,
        "dev": POSTGRES + SERVER + DEV,
    },
    entry_points={"console_scripts": ["vasp=vasp_model.cli:main"]},
)
