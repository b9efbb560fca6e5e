# GPU training image: the Airflow image's contents with TensorFlow 2.21 built for CUDA instead of
# tensorflow-cpu. TensorFlow's supported Linux GPU install is the pip extra `tensorflow[and-cuda]`,
# which brings the matching CUDA/cuDNN wheels; the host only needs the NVIDIA driver + container
# toolkit. Being an Airflow image, it runs the DAG's `train` task either as a Celery worker on queue
# `gpu` (compose profile "gpu") or as the KubernetesExecutor pod of that task (pod_override image).
#   docker build -f infra/docker/train-gpu.Dockerfile -t vasp-train-gpu:0.1.0 .    (context = repo root)
# Versions must equal setup.py's STACK pins (tests/integration/test_deploy_artifacts.py checks).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
ARG TENSORFLOW_VERSION=2.21.0

FROM python:${PYTHON_VERSION}-slim-bookworm AS wheel
WORKDIR /src
COPY setup.py pyproject.toml ./
COPY vasp_model ./vasp_model
COPY jobs ./jobs
COPY dags ./dags
COPY infra/docker/requirements.py ./infra/docker/requirements.py
RUN pip wheel --no-deps --no-cache-dir . -w /dist \
 && python infra/docker/requirements.py train-gpu > /dist/requirements.txt

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
ARG TENSORFLOW_VERSION
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --from=wheel /dist /tmp/dist
# requirements.txt has tensorflow[and-cuda]==${TENSORFLOW_VERSION} in place of tensorflow-cpu; the
# package goes in with --no-deps so pip never pulls tensorflow-cpu next to it (both own `tensorflow/`).
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/dist/requirements.txt \
 && pip install --no-cache-dir --no-deps /tmp/dist/vasp_pipeline-*.whl \
 && python -c "import tensorflow as tf; assert tf.__version__ == '${TENSORFLOW_VERSION}', tf.__version__"
ENV KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    VASP_HOME=/opt/airflow/run \
    VASP_WAREHOUSE=/data/warehouse
# Expose the GPU with `--gpus all` (docker), the compose device reservation, or nvidia.com/gpu limits (k8s).
