# Spark 4.2 image for the standalone master/workers (and their Python executors), also used for
# `mlflow server`. Spark comes from the pip pyspark (its jars + bin/spark-class), so the executors'
# Python (3.11) and library versions are exactly the driver's: PySpark requires the same minor Python on
# driver and executors, and the score job's executors unpickle Arrow batches and load the Keras model.
#   docker build -f infra/docker/spark.Dockerfile -t vasp-spark:0.1.0 .            (context = repo root)
# Versions must equal setup.py's STACK pins (tests/integration/test_deploy_artifacts.py checks).
ARG PYTHON_VERSION=3.11
ARG SPARK_VERSION=4.2.0

FROM python:${PYTHON_VERSION}-slim-bookworm AS wheel
WORKDIR /src
COPY setup.py pyproject.toml ./
COPY vasp_model ./vasp_model
COPY jobs ./jobs
COPY dags ./dags
COPY infra/docker/requirements.py ./infra/docker/requirements.py
RUN pip wheel --no-deps --no-cache-dir . -w /dist \
 && python infra/docker/requirements.py spark > /dist/requirements.txt

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG SPARK_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 50000 --gid 0 spark \
 && mkdir -p /data/warehouse /home/spark/mlartifacts /home/spark/work \
 && chown -R 50000:0 /data /home/spark && chmod -R g+rwX /data /home/spark
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
COPY --from=wheel /dist /tmp/dist
RUN pip install --no-cache-dir "pyspark==${SPARK_VERSION}" -r /tmp/dist/requirements.txt \
 && pip install --no-cache-dir --no-deps /tmp/dist/vasp_pipeline-*.whl \
 && rm -rf /tmp/dist
# The package is installed here too, but jobs are still submitted with --py-files (the wheel shipped per
# application): an executor image that lags the driver's code then cannot silently run old code.
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=python3 \
    SPARK_NO_DAEMONIZE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_ENABLE_ONEDNN_OPTS=0
ENV PATH=$SPARK_HOME/bin:$PATH
# uid 50000 / gid 0 = the official Airflow image's user: the Spark executors and the Airflow-side
# driver write into the same shared warehouse volume, so they must be the same user.
USER 50000:0
WORKDIR /home/spark
ENTRYPOINT ["/usr/bin/tini", "--"]
# compose/k8s pass e.g.: spark-class org.apache.spark.deploy.master.Master --host 0.0.0.0
CMD ["spark-class", "org.apache.spark.deploy.master.Master"]
