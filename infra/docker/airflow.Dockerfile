# Airflow image for the VASP pipeline: scheduler, dag-processor, api-server, Celery/Kubernetes workers.
# Tasks run `vasp ...` / SparkSubmitOperator from here, so it carries the package and Java 17 (the Spark
# driver runs in the worker in client mode).
#   docker build -f infra/docker/airflow.Dockerfile -t vasp-airflow:0.1.0 .        (context = repo root)
# Versions must equal setup.py's STACK pins (tests/integration/test_deploy_artifacts.py checks).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

# ---- build the package wheel once (same stage in every image) ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS wheel
WORKDIR /src
COPY setup.py pyproject.toml ./
COPY vasp_model ./vasp_model
COPY jobs ./jobs
COPY dags ./dags
COPY infra/docker/requirements.py ./infra/docker/requirements.py
RUN pip wheel --no-deps --no-cache-dir . -w /dist \
 && python infra/docker/requirements.py airflow > /dist/requirements.txt

# ---- runtime ----
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
USER airflow
COPY --from=wheel /dist /tmp/dist
# Pin apache-airflow again on the same line, as the official image's docs require, so that nothing
# in our requirements can up/downgrade the Airflow the image was built with.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/dist/requirements.txt \
 && pip install --no-cache-dir --no-deps /tmp/dist/vasp_pipeline-*.whl \
 && mkdir -p /opt/airflow/vasp-dist \
 && for w in /tmp/dist/vasp_pipeline-*.whl; do cp "$w" "/opt/airflow/vasp-dist/$(basename "${w%.whl}").zip"; done
# ^ the wheel again under a .zip name: SparkSubmitOperator ships it with --py-files (VASP_SPARK_PY_FILES), so
#   Spark executors run the driver's exact code (PySpark only puts .zip/.egg/.jar py-files on sys.path).
# DAG files are not in the wheel: they are copied to /opt/airflow/dags below (or mount dags/).
ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYSPARK_PYTHON=python3 \
    VASP_HOME=/opt/airflow/run \
    VASP_WAREHOUSE=/data/warehouse \
    VASP_SPARK_PY_FILES=/opt/airflow/vasp-dist/vasp_pipeline-0.1.0-py3-none-any.zip \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_ENABLE_ONEDNN_OPTS=0
COPY --chown=airflow:root dags /opt/airflow/dags
# SimpleAuthManager's passwords file lives here (a volume in the compose stack: the image's ownership carries over)
RUN mkdir -p /opt/airflow/auth
