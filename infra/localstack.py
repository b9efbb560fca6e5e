"""Start and stop a local multi-process stack on 127.0.0.1: Spark standalone, PostgreSQL, MLflow server.

Used by the shell scripts in ``infra/`` and by the integration tests. Every service is a
real process started here in its own session; its PID goes to ``<state>/<name>.pid``, its
output to ``<state>/<name>.log``, and it is stopped by that PID (never by name). Nothing
binds anything but 127.0.0.1.

CLI (what ``infra/spark/start-cluster.sh`` etc. call)::

    python infra/localstack.py start spark|postgres|mlflow|all [--state-dir run/localstack]
    python infra/localstack.py stop  spark|postgres|mlflow|all
    python infra/localstack.py status

Library::

    cluster = start_spark(state_dir)          # SparkCluster(master_url=..., pids=...)
    stop_spark(cluster)
    pg = start_postgres(state_dir)            # Postgres(port=..., uri("mlflow"), ...)
    server = start_mlflow(state_dir, backend_store_uri=pg.uri("mlflow"))
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
PG_DATABASES = ("mlflow", "airflow")
PG_ROLE = "vasp"


# --------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still "exists": reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def spawn(
    name: str,
    argv: Sequence[str],
    state_dir: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: str | Path | None = None,
) -> int:
    """Start ``argv`` in a new session (so its PID is also its process-group id); write <name>.pid."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            user=user,
        )
    finally:
        log.close()
    (state_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(state_dir: Path, name: str) -> int | None:
    path = state_dir / f"{name}.pid"
    if not path.exists():
        return None
    text = path.read_text().strip()
    return int(text) if text.isdigit() else None


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Send ``sig`` to ``pid``; after ``timeout`` s SIGKILL its process group. True if it had been running."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    # The process was started as a session leader: its group id is its PID. Kill what is left
    # of that group (a forked server worker that ignored the signal), and the leader if needed.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    return True


def stop_named(state_dir: Path, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    pid = read_pid(state_dir, name)
    if pid is None:
        return False
    was_running = stop_pid(pid, sig, timeout)
    (state_dir / f"{name}.pid").unlink(missing_ok=True)
    return was_running


def wait_until(check, timeout: float, what: str, pid: int | None = None, log: Path | None = None) -> None:
    """Poll ``check()`` until true; raise RuntimeError naming ``what`` (with the log tail) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        if pid is not None and not pid_alive(pid):
            raise RuntimeError(f"{what}: process {pid} exited early{_tail(log)}")
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s{_tail(log)}")


def _tail(log: Path | None, n: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-n:]
    return "\n--- " + str(log) + " ---\n" + "\n".join(lines)


def http_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URL only
        return json.loads(resp.read().decode())


def http_ok(url: str, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URL only
        return resp.status == 200


def _save_state(state_dir: Path, name: str, info: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")


def _load_state(state_dir: Path, name: str) -> dict | None:
    path = state_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------------------
# Spark standalone


def spark_home() -> Path:
    """SPARK_HOME, or the installed pip pyspark (which ships bin/spark-class and the jars)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pyspark is not installed and SPARK_HOME is not set")
    return Path(next(iter(spec.submodule_search_locations)))


def spark_env() -> dict[str, str]:
    home = spark_home()
    java = shutil.which("java")
    if java is None and not os.environ.get("JAVA_HOME"):
        raise FileNotFoundError("java is not on PATH (Spark needs Java 17+)")
    # SPARK_DAEMON_MEMORY sizes the master/worker daemons themselves (default 1g heap each), not executors
    env = {
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": HOST,
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_DAEMON_MEMORY": os.environ.get("SPARK_DAEMON_MEMORY", "256m"),
    }
    # spark-class finds python-less Java via PATH; make sure the venv's bin (pyspark's scripts) is first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return env


@dataclasses.dataclass
class SparkCluster:
    master_url: str
    master_port: int
    webui_port: int
    state_dir: str
    master_pid: int
    worker_pids: list[int]

    def alive_workers(self) -> int:
        return int(http_json(f"http://{HOST}:{self.webui_port}/json/").get("aliveworkers", 0))


def start_spark(
    state_dir: str | Path,
    workers: int = 2,
    cores: int = 1,
    memory: str = "1g",
    master_port: int | None = None,
    timeout: float = 120.0,
) -> SparkCluster:
    """Master + ``workers`` workers (``cores`` cores, ``memory`` each), all on 127.0.0.1.

    ``master_port=None`` picks a free port (tests); the scripts pass 7077.
    Returns once every worker is registered (ALIVE) with the master.
    """
    state = Path(state_dir).resolve() / "spark"
    if (existing := _load_state(state, "cluster")) and pid_alive(existing["master_pid"]):
        raise RuntimeError(f"a Spark master started from {state} is still running (pid {existing['master_pid']})")
    env = spark_env()
    spark_class = str(spark_home() / "bin" / "spark-class")
    master_port = master_port or free_port()
    if port_open(master_port):
        raise RuntimeError(f"port {master_port} on {HOST} is already in use")
    webui = free_port()
    master_pid = spawn(
        "master",
        [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            HOST,
            "--port",
            str(master_port),
            "--webui-port",
            str(webui),
        ],
        state,
        # No REST submission server (fixed port 6066; only cluster deploy mode uses it): client mode only.
        env={**env, "SPARK_LOG_DIR": str(state), "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"},
        cwd=state,
    )
    cluster = SparkCluster(f"spark://{HOST}:{master_port}", master_port, webui, str(state), master_pid, [])
    _save_state(state, "cluster", dataclasses.asdict(cluster))
    try:
        wait_until(
            lambda: http_json(f"http://{HOST}:{webui}/json/")["status"] == "ALIVE",
            timeout,
            "Spark master",
            master_pid,
            state / "master.log",
        )
        for i in range(workers):
            work_dir = state / f"work-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
            pid = spawn(
                f"worker-{i}",
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    cluster.master_url,
                    "--host",
                    HOST,
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(work_dir),
                ],
                state,
                env={**env, "SPARK_LOG_DIR": str(state), "SPARK_WORKER_DIR": str(work_dir)},
                cwd=state,
            )
            cluster.worker_pids.append(pid)
            _save_state(state, "cluster", dataclasses.asdict(cluster))
        wait_until(
            lambda: cluster.alive_workers() >= workers,
            timeout,
            f"{workers} Spark workers registering",
            master_pid,
            state / "master.log",
        )
    except BaseException:
        stop_spark(cluster)
        raise
    return cluster


def stop_spark(cluster: SparkCluster | str | Path) -> None:
    """Workers' JVMs first (so they do not try to reconnect), then the master — each by its PID."""
    if isinstance(cluster, SparkCluster):
        state = Path(cluster.state_dir)
    else:
        state = Path(cluster).resolve() / "spark"
    names = sorted(p.stem for p in state.glob("worker-*.pid"))
    for name in names:
        stop_named(state, name)
    stop_named(state, "master")
    (state / "cluster.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# PostgreSQL


def pg_bin() -> Path | None:
    """Directory with initdb/postgres: $PG_BIN, Debian's /usr/lib/postgresql/N/bin, or PATH."""
    if os.environ.get("PG_BIN"):
        explicit = Path(os.environ["PG_BIN"])
        return explicit if (explicit / "initdb").exists() else None
    for cand in PG_BIN_CANDIDATES:
        if Path(cand, "initdb").exists():
            return Path(cand)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclasses.dataclass
class Postgres:
    port: int
    data_dir: str
    state_dir: str
    pid: int
    role: str = PG_ROLE

    def uri(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """``postgresql+psycopg2://vasp@127.0.0.1:PORT/DB`` (trust auth on 127.0.0.1: a throwaway cluster).

        SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; the stack ships psycopg2-binary.
        """
        return f"{driver}://{self.role}@{HOST}:{self.port}/{database}"


def _run_user() -> str | None:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root but there is no 'postgres' user (install Debian's postgresql)") from exc
    return "postgres"


def start_postgres(
    state_dir: str | Path, port: int | None = None, data_dir: str | Path | None = None, timeout: float = 60.0
) -> Postgres:
    """initdb a throwaway cluster, start it on 127.0.0.1:``port``, create role ``vasp`` and DBs mlflow, airflow.

    As root the server runs as ``postgres``; the data directory must then be reachable by that user,
    so by default it is a fresh ``/tmp/vasp-pg-*`` directory (pytest's tmp dirs are root-only).
    """
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries not found (run infra/ci/install-system-deps.sh or set PG_BIN)")
    state = Path(state_dir).resolve() / "postgres"
    state.mkdir(parents=True, exist_ok=True)
    if (existing := _load_state(state, "postgres")) and pid_alive(existing["pid"]):
        raise RuntimeError(f"a PostgreSQL started from {state} is still running (pid {existing['pid']})")
    user = _run_user()
    data = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="vasp-pg-"))
    data.mkdir(parents=True, exist_ok=True)
    if user:
        pw = pwd.getpwnam(user)
        os.chown(data, pw.pw_uid, pw.pw_gid)
        os.chmod(data, 0o700)
    port = port or free_port()
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=user,
            cwd=str(data),
        )
    pid = spawn(
        "postgres",
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"unix_socket_directories={data}",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=100",
            "-c",
            "shared_buffers=32MB",
        ],
        state,
        user=user,
        cwd=data,
    )
    pg = Postgres(port=port, data_dir=str(data), state_dir=str(state), pid=pid)
    _save_state(state, "postgres", dataclasses.asdict(pg))
    try:
        wait_until(
            lambda: (
                subprocess.run(
                    [str(bindir / "pg_isready"), "-h", HOST, "-p", str(port)], capture_output=True
                ).returncode
                == 0
            ),
            timeout,
            "PostgreSQL",
            pid,
            state / "postgres.log",
        )
        _psql(bindir, port, f"CREATE ROLE {PG_ROLE} LOGIN CREATEDB")
        for db in PG_DATABASES:
            _psql(bindir, port, f"CREATE DATABASE {db} OWNER {PG_ROLE}")
    except BaseException:
        stop_postgres(pg)
        raise
    return pg


def _psql(bindir: Path, port: int, sql: str) -> None:
    subprocess.run(
        [
            str(bindir / "psql"),
            "-h",
            HOST,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ],
        check=True,
        capture_output=True,
    )


def stop_postgres(pg: Postgres | str | Path, remove_data: bool = True) -> None:
    """Fast shutdown (SIGINT to the postmaster, by PID); remove the throwaway data directory."""
    if isinstance(pg, Postgres):
        state, data = Path(pg.state_dir), pg.data_dir
    else:
        state = Path(pg).resolve() / "postgres"
        info = _load_state(state, "postgres") or {}
        data = info.get("data_dir")
    stop_named(state, "postgres", sig=signal.SIGINT)
    (state / "postgres.json").unlink(missing_ok=True)
    if remove_data and data and Path(data).name.startswith("vasp-pg-"):
        shutil.rmtree(data, ignore_errors=True)


# --------------------------------------------------------------------------------------
# MLflow server


@dataclasses.dataclass
class MlflowServer:
    url: str
    port: int
    state_dir: str
    pid: int
    backend_store_uri: str
    artifacts_destination: str
    auth_username: str | None = None  # set: behind MLflow's basic-auth app (the password is never stored here)


MLFLOW_ADMIN = "admin"
MLFLOW_PASSWORD_FILE = "admin-password"  # the CLI's generated admin password (mode 0600), in <state>/mlflow/


def write_auth_config(state: Path, admin_username: str = MLFLOW_ADMIN) -> Path:
    """MLflow's basic-auth config (``MLFLOW_AUTH_CONFIG_PATH``): users in ``<state>/basic_auth.db``, an
    authenticated user may read everything and write what it creates, anonymous requests get 401.
    The admin password is not in it: the server reads ``MLFLOW_AUTH_ADMIN_PASSWORD`` on first start."""
    path = state / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{state / 'basic_auth.db'}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a verified password is remembered for a minute: the hash check costs ~0.1-2 s per request, and
        # logging a model reads every metric of its run back one request at a time
        "auth_cache_ttl_seconds = 60\n"
    )
    return path


def start_mlflow(
    state_dir: str | Path,
    backend_store_uri: str,
    artifacts_destination: str | None = None,
    port: int | None = None,
    timeout: float = 120.0,
    admin_password: str | None = None,
) -> MlflowServer:
    """``mlflow server`` on 127.0.0.1 with ``backend_store_uri`` (PostgreSQL) and proxied local artifacts.

    Clients only need the tracking URI (``http://127.0.0.1:PORT``); artifacts go through the
    server (``--serve-artifacts``), as they would to an object store behind it on a cluster.
    With ``admin_password`` it runs MLflow's basic-auth app (``--app-name basic-auth``): every request
    needs credentials (clients: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``); the admin
    user is created with that password on first start (a restart keeps the users it stored).
    """
    state = Path(state_dir).resolve() / "mlflow"
    state.mkdir(parents=True, exist_ok=True)
    if (existing := _load_state(state, "mlflow")) and pid_alive(existing["pid"]):
        raise RuntimeError(f"an mlflow server started from {state} is still running (pid {existing['pid']})")
    artifacts = artifacts_destination or (state / "artifacts").as_uri()
    port = port or free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    # MLflow 3.x also forks a job runner (huey consumers for GenAI jobs) that this pipeline never uses
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    auth_args: list[str] = []
    if admin_password:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(state))
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or os.urandom(24).hex()
        auth_args = ["--app-name", "basic-auth"]
    pid = spawn(
        "mlflow",
        [
            mlflow_bin,
            "server",
            *auth_args,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            artifacts,
        ],
        state,
        env=env,
        cwd=state,
    )
    user = MLFLOW_ADMIN if admin_password else None
    server = MlflowServer(f"http://{HOST}:{port}", port, str(state), pid, backend_store_uri, artifacts, user)
    _save_state(state, "mlflow", dataclasses.asdict(server))
    try:
        wait_until(lambda: http_ok(f"{server.url}/health"), timeout, "mlflow server", pid, state / "mlflow.log")
    except BaseException:
        stop_mlflow(server)
        raise
    return server


def mlflow_admin_password(state: Path) -> tuple[str, str]:
    """(password, what the user exports) of the CLI's auth-enabled server: ``$MLFLOW_TRACKING_PASSWORD``
    if set, else the one generated into ``<state>/admin-password`` (0600) on first start. Never printed."""
    import secrets

    if os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return os.environ["MLFLOW_TRACKING_PASSWORD"], f" MLFLOW_TRACKING_USERNAME={MLFLOW_ADMIN}"
    path = state / MLFLOW_PASSWORD_FILE
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip(), (
        f" MLFLOW_TRACKING_USERNAME={MLFLOW_ADMIN} MLFLOW_TRACKING_PASSWORD=$(cat {path})"
    )


def stop_mlflow(server: MlflowServer | str | Path) -> None:
    state = Path(server.state_dir) if isinstance(server, MlflowServer) else Path(server).resolve() / "mlflow"
    stop_named(state, "mlflow", sig=signal.SIGTERM, timeout=20)
    (state / "mlflow.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# CLI


def _status(state_dir: Path) -> dict:
    out = {}
    for service, name in (("spark", "cluster"), ("postgres", "postgres"), ("mlflow", "mlflow")):
        info = _load_state(state_dir / service, name)
        if info:
            pid = info.get("master_pid", info.get("pid"))
            out[service] = {**info, "running": bool(pid and pid_alive(pid))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/localstack.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"], help="what to do")
    parser.add_argument(
        "service",
        nargs="?",
        default="all",
        choices=["spark", "postgres", "mlflow", "all"],
        help="which service (all = postgres, mlflow on it, spark)",
    )
    parser.add_argument(
        "--state-dir",
        default=os.path.join(os.environ.get("VASP_HOME", str(REPO / "run")), "localstack"),
        help="where PID files, logs and state live (default $VASP_HOME/localstack)",
    )
    parser.add_argument("--spark-port", type=int, default=7077, help="Spark master port (0 = any free port)")
    parser.add_argument("--workers", type=int, default=2, help="number of Spark workers")
    parser.add_argument("--worker-cores", type=int, default=1, help="cores per Spark worker")
    parser.add_argument("--worker-memory", default="1g", help="memory per Spark worker")
    parser.add_argument("--pg-port", type=int, default=0, help="PostgreSQL port (0 = any free port)")
    parser.add_argument("--mlflow-port", type=int, default=5000, help="mlflow server port (0 = any free port)")
    parser.add_argument(
        "--backend-store-uri", default=None, help="MLflow backend store (default: the local PostgreSQL's mlflow DB)"
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="mlflow server without MLflow's basic-auth app (default: auth on; the admin password is "
        "$MLFLOW_TRACKING_PASSWORD, else generated into <state>/mlflow/admin-password)",
    )
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    services = ["postgres", "mlflow", "spark"] if args.service == "all" else [args.service]

    if args.action == "status":
        print(json.dumps(_status(state), indent=2))
        return 0
    if args.action == "stop":
        for service in reversed(services):
            {
                "spark": lambda: stop_spark(state),
                "postgres": lambda: stop_postgres(state),
                "mlflow": lambda: stop_mlflow(state),
            }[service]()
            print(f"stopped {service}")
        return 0
    for service in services:
        if service == "postgres":
            pg = start_postgres(state, port=args.pg_port or None)
            print(f"postgres: pid {pg.pid}; mlflow DB {pg.uri('mlflow')}; airflow DB {pg.uri('airflow')}")
        elif service == "mlflow":
            backend = args.backend_store_uri
            if backend is None:
                info = _load_state(state / "postgres", "postgres")
                if not info:
                    raise SystemExit("mlflow: no local PostgreSQL running; start it or pass --backend-store-uri")
                backend = Postgres(**info).uri("mlflow")
            password, hint = None, ""
            if not args.no_auth:
                password, hint = mlflow_admin_password(state / "mlflow")
            server = start_mlflow(state, backend, port=args.mlflow_port or None, admin_password=password)
            print(f"mlflow: pid {server.pid}; export VASP_TRACKING_URI={server.url}{hint}")
        else:
            cluster = start_spark(
                state,
                workers=args.workers,
                cores=args.worker_cores,
                memory=args.worker_memory,
                master_port=args.spark_port or None,
            )
            print(
                f"spark: master pid {cluster.master_pid}, workers {cluster.worker_pids}; "
                f"export VASP_SPARK_MASTER={cluster.master_url}  (UI http://{HOST}:{cluster.webui_port})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
