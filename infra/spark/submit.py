"""spark-submit the pipeline's Spark jobs to a cluster, shipping the package with the application.

    python infra/spark/submit.py build --master spark://127.0.0.1:7077 -- --input u.data --date 2024-01-01
    python infra/spark/submit.py score --master spark://127.0.0.1:7077 -- --date 2024-01-01 --model-uri DIR

What a real cluster needs, done here:
* The package is built as a wheel (``pip wheel --no-deps .`` -> ``dist/``; the same artefact the images
  install) and shipped per application with ``--py-files``. PySpark puts only ``.zip``/``.egg``/``.jar``
  py-files on the executors' ``sys.path`` (``SparkContext.PACKAGE_EXTENSIONS``), so the wheel — a zip of
  pure-Python packages — is shipped under a ``.zip`` name.
* ``--isolated`` runs driver and executors with an interpreter that sees the venv's third-party
  libraries but NOT the package itself (no editable install, no repo on ``sys.path``): every
  ``vasp_model``/``vasp_jobs`` import then comes from the shipped zip, which is what proves the shipping.

The jobs are the Spark stages of the stage registry (``vasp_model.pipeline.stages``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from vasp_model.pipeline.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
JOBS = {name: stage for name, stage in STAGES.items() if stage.script}


def build_wheel(out_dir: str | Path | None = None) -> Path:
    """Build the package wheel into ``out_dir`` (default ``dist/``) and return its path."""
    out = Path(out_dir or REPO / "dist").resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("vasp_pipeline-*.whl"):
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    (wheel,) = out.glob("vasp_pipeline-*.whl")
    return wheel


def py_files_zip(wheel: str | Path) -> Path:
    """The wheel under a ``.zip`` name (Spark adds only .zip/.egg/.jar py-files to executors' sys.path)."""
    wheel = Path(wheel)
    target = wheel.with_name(wheel.name[: -len(".whl")] + ".zip")
    shutil.copyfile(wheel, target)
    return target


def isolated_python(env_dir: str | Path) -> Path:
    """An interpreter with this venv's libraries but without the package (nor its editable finder).

    A ``venv --without-pip`` whose site-packages holds one ``.pth`` line pointing at this venv's
    site-packages: the libraries import, but ``.pth`` files inside that directory (the editable
    install's finder) are not processed, so ``import vasp_model`` fails unless the zip is shipped.
    """
    env_dir = Path(env_dir).resolve()
    python = env_dir / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
        site = Path(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        site.mkdir(parents=True, exist_ok=True)
        (site / "vasp_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import pandas, pyarrow, pyspark\ntry:\n import vasp_model\nexcept ImportError:\n pass\n"
            "else:\n raise SystemExit('vasp_model importable without --py-files')",
        ],
        capture_output=True,
        text=True,
        cwd=env_dir,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # as submit() runs it
    )
    if probe.returncode != 0:
        raise RuntimeError(f"isolated interpreter {python} is not usable: {probe.stderr.strip()[-500:]}")
    return python


def spark_submit_bin() -> str:
    found = shutil.which("spark-submit", path=str(Path(sys.executable).parent)) or shutil.which("spark-submit")
    if not found:
        raise FileNotFoundError("spark-submit not found (install pyspark or set PATH)")
    return found


def submit_argv(
    job: str,
    job_args: Sequence[str],
    master: str,
    py_files: str | Path,
    python: str | Path | None = None,
    conf: Mapping[str, str] | None = None,
) -> list[str]:
    """The spark-submit command line for ``job`` (build | score)."""
    if job not in JOBS:
        raise ValueError(f"job must be one of {sorted(JOBS)}, got {job!r}")
    argv = [spark_submit_bin(), "--master", master, "--deploy-mode", "client", "--name", f"vasp-{job}"]
    argv += ["--py-files", str(py_files)]
    settings = dict(conf or {})
    if python:
        settings.setdefault("spark.pyspark.python", str(python))
        settings.setdefault("spark.pyspark.driver.python", str(python))
    for key, value in settings.items():
        argv += ["--conf", f"{key}={value}"]
    # --master is also passed to the job: its SparkConfig would otherwise default to local[*]
    # (the session builder's master wins over spark-submit's for an application that sets it).
    argv += [JOBS[job].application, *job_args, "--master", master]
    return argv


def submit(
    job: str,
    job_args: Sequence[str],
    master: str,
    py_files: str | Path,
    python: str | Path | None = None,
    conf: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run spark-submit for ``job``; raises CalledProcessError (with the output) when it fails."""
    argv = submit_argv(job, job_args, master, py_files, python, conf)
    full_env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **(env or {})}
    # The job must not find the repo through PYTHONPATH/cwd when isolation is asked for.
    full_env.pop("PYTHONPATH", None)
    result = subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra/spark/submit.py",
        description=__doc__.splitlines()[0],
        epilog="Arguments after -- go to the job (see `vasp build --help`, `vasp score --help`).",
    )
    parser.add_argument("job", choices=sorted(JOBS), help="which Spark job to submit")
    parser.add_argument(
        "--master",
        default=os.environ.get("VASP_SPARK_MASTER", "spark://127.0.0.1:7077"),
        help="Spark master URL (default $VASP_SPARK_MASTER or spark://127.0.0.1:7077)",
    )
    parser.add_argument("--dist", default=str(REPO / "dist"), help="where the wheel is built (default dist/)")
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="run driver + executors with an interpreter that lacks the package (proves the shipping)",
    )
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark property")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, job_args = parser.parse_args(argv[:split]), argv[split + 1 :]
    zipped = py_files_zip(build_wheel(args.dist))
    python = isolated_python(Path(args.dist) / "isolated-python") if args.isolated else None
    conf = dict(item.split("=", 1) for item in args.conf)
    cmd = submit_argv(args.job, job_args, args.master, zipped, python, conf)
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
