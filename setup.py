"""Installable package `vasp-pipeline`: the nightly VASP recommender pipeline."""

from setuptools import find_packages, setup

# The one place the stack is pinned (see ../shared/STACK.md for why these versions).
STACK = [
    "apache-airflow==3.3.2",
    "apache-airflow-providers-apache-spark==6.3.4",
    "pyspark==4.2.0",
    "pyspark-client==4.2.0",  # pulled in by the Spark provider; must equal pyspark
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "mlflow==3.17.2",
    "pyarrow==25.0.1",
    "scipy==1.17.1",
    "pandas==2.3.3",
    "matplotlib>=3.9,<4",
]

DEV = [
    "pytest>=8,<10",
    "ruff==0.17.5",
    "duckdb>=1.1,<3",
    "jax[cpu]>=0.7,<0.13",  # second Keras backend for the cross-backend test
    "psycopg2-binary>=2.9,<3",  # MLflow server on PostgreSQL (infra tests)
    "asyncpg>=0.29,<1",  # Airflow 3 metadata on PostgreSQL (infra tests)
]

setup(
    name="vasp-pipeline",
    version="0.1.0",
    description="Nightly VASP recommender pipeline: Spark features, Keras 3 VASP, MLflow registry, Airflow DAG",
    python_requires=">=3.11",
    packages=find_packages(include=["vasp_model*", "jobs*", "dags*"]),
    install_requires=STACK,
    extras_require={"dev": DEV},
    entry_points={"console_scripts": ["vasp=vasp_model.cli:main"]},
)
