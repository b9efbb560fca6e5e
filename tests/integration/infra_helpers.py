"""Shared helpers of the infra service tests: load infra/ modules by path, CI-aware requirements."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_infra(relpath: str):
    """Import ``infra/<relpath>`` (infra/ is deployment tooling, not part of the installed package)."""
    path = ROOT / "infra" / relpath
    name = "vasp_infra_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(available: bool, reason: str) -> None:
    """Skip when a system dependency is missing locally; FAIL under CI=true, where it must be installed
    (``infra/ci/install-system-deps.sh``)."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason} — CI=true requires it (run infra/ci/install-system-deps.sh)", pytrace=False)
    pytest.skip(reason)


def subprocess_env(run_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of the pipeline's subprocesses: isolated run dir, loopback Spark, quiet TensorFlow."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "VASP_HOME": str(run_dir),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def read_parquet_files(directory: Path):
    """A published date's Parquet files as one DataFrame (the directory also holds _manifest.json/_SUCCESS)."""
    import pyarrow.parquet as pq

    files = sorted(str(f) for f in Path(directory).glob("*.parquet"))
    assert files, f"no Parquet files in {directory}"
    return pq.read_table(files).to_pandas()


def run_or_fail(argv: list[str], env: dict, what: str, timeout: float) -> str:
    """Run ``argv``; its stdout, or the test fails with ``what`` and the ends of its output."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{what} failed (rc {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result.stdout
