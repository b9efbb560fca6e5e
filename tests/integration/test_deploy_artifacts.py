"""Checks of the deployment artefacts in infra/ that can run without Docker or Kubernetes.

No Docker engine (and no `docker compose` plugin) exists where this runs, so the images are never
built here. What is checked: the YAML parses; every compose service's command is a real entry point of
the installed stack (Airflow's CLI parser, MLflow's click command, a Spark class in the pyspark jars,
`vasp` subcommands); the Dockerfiles' pinned versions equal setup.py's; Helm values / pod template
carry the GPU wiring; the `spark` connection URIs resolve to the intended master.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose" / "docker-compose.yml"
DOCKERFILES = {
    "airflow": INFRA / "docker" / "airflow.Dockerfile",
    "spark": INFRA / "docker" / "spark.Dockerfile",
    "train-gpu": INFRA / "docker" / "train-gpu.Dockerfile",
}
VALUES = INFRA / "k8s" / "airflow-values.yaml"
POD_TEMPLATE = INFRA / "k8s" / "pod-template-train-gpu.yaml"
OUR_IMAGES = ("vasp-airflow", "vasp-spark", "vasp-train-gpu")


def _load_module(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements = _load_module("vasp_infra_requirements", INFRA / "docker" / "requirements.py")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the default (what `docker compose config` gives without an .env)."""
    return re.sub(r"\$\{([A-Z0-9_]+):-([^}]*)\}", lambda m: m.group(2), value)


def _commands(compose: dict):
    """(service, argv) for each service running one of our images; `bash -c "a && b"` yields a and b."""
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        if not image.startswith(OUR_IMAGES):
            continue
        assert "command" in svc, f"service {name} runs our image but has no explicit command"
        argv = [_interpolate(str(a)) for a in svc["command"]]
        if argv[:2] == ["bash", "-c"]:
            for part in argv[2].split("&&"):
                yield name, shlex.split(part)
        else:
            yield name, argv


def test_compose_parses_and_is_coherent(compose):
    services = compose["services"]
    assert {
        "postgres",
        "mlflow",
        "spark-master",
        "spark-worker",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-worker",
    } <= set(services)
    declared_volumes = set(compose.get("volumes", {}))
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name, f"{name} depends on itself"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
            elif source.startswith("."):
                if "${" in source:
                    continue
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing path {source}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
    # one executor, and the pieces it needs
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "redis" in services and "redis://redis:" in env["AIRFLOW__CELERY__BROKER_URL"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["VASP_TRACKING_URI"] == "http://mlflow:5000"
    # the warehouse volume is shared by the Spark driver (Airflow worker) and executors (Spark worker)
    for name in ("airflow-worker", "spark-worker"):
        assert any(v.startswith("warehouse:/data/warehouse") for v in services[name]["volumes"]), name
    # a GPU worker listens on queue gpu; the CPU worker takes gpu too unless told otherwise
    gpu = services["airflow-worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "gpu" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_variables_all_have_defaults():
    text = COMPOSE.read_text()
    bare = re.findall(r"\$\{([A-Z0-9_]+)\}", text) + re.findall(r"\$\{([A-Z0-9_]+):\?", text)
    assert not bare, f"variables without a default make `docker compose config` fail without .env: {bare}"


def test_compose_airflow_commands_exist(compose):
    from airflow.cli import cli_parser

    parser = cli_parser.get_parser()
    seen = 0
    for name, argv in _commands(compose):
        if argv[0] != "airflow":
            continue
        seen += 1
        if argv[1] == "celery":
            # `airflow celery` comes from apache-airflow-providers-celery, bundled in the official image
            # but not installed here: check the worker options against that command's documented flags.
            assert argv[2] == "worker", (name, argv)
            flags = {a for a in argv[3:] if a.startswith("-")}
            assert flags <= {"--queues", "-q", "--concurrency", "-c", "--hostname", "-H"}, (name, flags)
            continue
        try:
            parser.parse_args(argv[1:])
        except SystemExit as exc:  # argparse error
            pytest.fail(f"service {name}: `{' '.join(argv)}` is not a valid airflow command ({exc})")
    assert seen >= 5


def test_compose_mlflow_command_exists(compose):
    from mlflow.cli import cli

    server = cli.commands["server"]
    found = False
    for name, argv in _commands(compose):
        if argv[0] != "mlflow":
            continue
        found = True
        assert argv[1] == "server", (name, argv)
        ctx = server.make_context("server", list(argv[2:]))  # parses options, runs nothing
        assert ctx.params["backend_store_uri"].startswith("postgresql+psycopg2://")
        assert ctx.params["serve_artifacts"] is True
    assert found


def test_compose_spark_classes_exist(compose):
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    core = next(jars.glob("spark-core_*.jar"))
    with zipfile.ZipFile(core) as jar:
        names = set(jar.namelist())
    known_flags = {"--host", "--port", "--webui-port", "--cores", "--memory", "--work-dir", "--properties-file"}
    found = 0
    for name, argv in _commands(compose):
        if argv[0] != "spark-class":
            continue
        found += 1
        assert argv[1].replace(".", "/") + ".class" in names, (name, argv[1])
        flags = {a for a in argv[2:] if a.startswith("--")}
        assert flags <= known_flags, (name, flags - known_flags)
        if argv[1].endswith("Worker"):
            assert argv[2] == "spark://spark-master:7077"
    assert found == 2


def test_compose_vasp_commands_are_subcommands(compose):
    from vasp_model.cli import SUBCOMMANDS

    for name, argv in _commands(compose):
        if argv[0] == "vasp":
            assert argv[1] in SUBCOMMANDS, (name, argv)
        else:
            assert argv[0] in {"airflow", "mlflow", "spark-class"}, (name, argv)


def test_dockerfile_versions_match_setup_pins():
    pins = requirements.pins(ROOT / "setup.py")
    expected = {
        "AIRFLOW_VERSION": pins["apache-airflow"],
        "SPARK_VERSION": pins["pyspark"],
        "TENSORFLOW_VERSION": pins["tensorflow-cpu"],
        "PYTHON_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    assert pins["pyspark"] == pins["pyspark-client"], "pyspark and pyspark-client must be equal (STACK.md)"
    for role, path in DOCKERFILES.items():
        text = path.read_text()
        args = dict(re.findall(r"^ARG ([A-Z_]+)=(\S+)$", text, flags=re.M))
        assert args, f"{path.name} has no pinned ARGs"
        for key, value in args.items():
            assert key in expected, f"{path.name}: unexpected ARG {key}"
            assert value == expected[key], f"{path.name}: {key}={value}, setup.py says {expected[key]}"
        # every COPY source exists in the build context (the repo root)
        for src in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, flags=re.M):
            for item in src.split():
                assert (ROOT / item).exists(), f"{path.name}: COPY source {item} missing"
        assert f"requirements.py {role}" in text, f"{path.name} must install the {role} requirement set"
        for image_pin in re.findall(r"==([0-9][^\s\"']*)", text):
            assert image_pin.startswith("$") or image_pin in pins.values(), (path.name, image_pin)


def test_requirement_roles_keep_setup_pins():
    stack = requirements.setup_lists(ROOT / "setup.py")["STACK"]
    airflow = requirements.requirements("airflow", ROOT / "setup.py")
    spark = requirements.requirements("spark", ROOT / "setup.py")
    gpu = requirements.requirements("train-gpu", ROOT / "setup.py")
    assert set(stack) <= set(airflow)
    assert not any(r.startswith("apache-airflow") for r in spark)
    pins = requirements.pins(ROOT / "setup.py")
    assert f"tensorflow[and-cuda]=={pins['tensorflow-cpu']}" in gpu
    assert not any(r.startswith("tensorflow-cpu") for r in gpu)
    for reqs in (airflow, spark, gpu):
        assert any(r.startswith("psycopg2-binary") for r in reqs)
    for reqs in (airflow, gpu):  # Airflow 3's async metadata engine on PostgreSQL
        assert any(r.startswith("asyncpg") for r in reqs)


def test_helm_values_gpu_wiring():
    values = yaml.safe_load(VALUES.read_text())
    pins = requirements.pins(ROOT / "setup.py")
    assert values["executor"] == "KubernetesExecutor"
    assert values["airflowVersion"] == pins["apache-airflow"]
    assert values["postgresql"]["enabled"] is False and values["redis"]["enabled"] is False
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["VASP_SPARK_MODE"] == "submit"
    template_path = Path(env["VASP_TRAIN_POD_TEMPLATE"])
    assert template_path.name == POD_TEMPLATE.name
    for component in ("scheduler", "workers"):
        mounts = values[component]["extraVolumeMounts"]
        assert any(m["mountPath"] == str(template_path.parent) for m in mounts), component

    pod = yaml.safe_load(POD_TEMPLATE.read_text())
    assert pod["kind"] == "Pod"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "base", "KubernetesExecutor merges task settings into the container named base"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["spec"]["tolerations"])
    assert "vasp-train-gpu" in container["image"]


@pytest.mark.parametrize(
    "source,expected",
    [("compose", "spark://spark-master:7077"), ("helm", "k8s://https://kubernetes.default.svc:443")],
)
def test_spark_connection_uris_resolve(source, expected, monkeypatch, tmp_path):
    if source == "compose":
        uri = yaml.safe_load(COMPOSE.read_text())["services"]["airflow-worker"]["environment"]["AIRFLOW_CONN_SPARK"]
    else:
        env = {e["name"]: e["value"] for e in yaml.safe_load(VALUES.read_text())["env"]}
        uri = env["AIRFLOW_CONN_SPARK"]
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    # A k8s:// master makes the hook require the cncf.kubernetes provider's client (bundled in the official
    # image, not installed here); stand in for it only so that the connection can be resolved.
    code = (
        "import airflow.providers.apache.spark.hooks.spark_submit as m\n"
        "m.kube_client = getattr(m, 'kube_client', None) or object()\n"
        "c = m.SparkSubmitHook(conn_id='spark')._connection\nprint(c['master'], c['deploy_mode'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "AIRFLOW_CONN_SPARK": uri, "AIRFLOW_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out[-2] == expected
    assert out[-1] == ("client" if source == "compose" else "cluster")


def test_shell_scripts_parse():
    scripts = sorted(INFRA.rglob("*.sh"))
    assert len(scripts) >= 3
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"
