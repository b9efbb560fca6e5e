"""A run that does not fit in memory is refused before anything is allocated: one line saying what it
needs, what is available and what would fit; nothing published, no MLflow run, no checkpoint."""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from features_fixture import built_features, copy_features, events_csv

from vasp_model.core.config import make_config
from vasp_model.data import layout, storage
from vasp_model.train import memory

DATE = "2026-04-05"
GOWALLA = (40_981, 29_858)  # items, train users of the catalog that was SIGKILLed


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """Tiny features for DATE built by the build job, copied into a warehouse of this module."""
    rng = np.random.default_rng(1)
    users = [f"u{u}" for u in range(120) for _ in range(8)]
    items = [f"i{i}" for u in range(120) for i in rng.choice(40, 8, replace=False)]
    built, _ = built_features(spark, tmp_path_factory, events_csv(users, items), DATE, heldout_users=12, ab_copies=2)
    wh = str(tmp_path_factory.mktemp("wh"))
    copy_features(built, DATE, wh)
    return wh


def _vasp_train(warehouse: str, tmp_path, *flags: str, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vasp_model.cli", "train", "--warehouse", warehouse, "--date", DATE]
    cmd += ["--preset", "tiny", "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    cmd += ["--checkpoint-dir", str(tmp_path / "ckpt"), *flags]
    environ = {k: v for k, v in os.environ.items() if k != "VASP_MEMORY_BUDGET"}
    environ["VASP_HOME"] = str(tmp_path / "run")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**environ, **env})


@pytest.mark.parametrize("how", ["env", "flag"])
def test_train_over_budget_is_refused_in_one_line_before_anything_starts(warehouse, tmp_path, how):
    if how == "env":
        proc = _vasp_train(warehouse, tmp_path, VASP_MEMORY_BUDGET="64m")
    else:
        proc = _vasp_train(warehouse, tmp_path, "--memory-budget", "64m")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("vasp train: error: training ") and "items needs about" in line
    assert "more than the memory budget: 0.1 GiB" in line and "no --max-items fits" in line
    assert "VASP_MEMORY_BUDGET" in line
    assert not storage.exists(layout.models_dir(warehouse, DATE))
    assert not (tmp_path / "ckpt").exists()
    if (tmp_path / "mlflow.db").exists():  # a store may be created, but holds no run
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0


def test_bad_budget_is_one_line(warehouse, tmp_path):
    proc = _vasp_train(warehouse, tmp_path, "--memory-budget", "lots")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "vasp train: error: memory budget must be a size like 16g, 512m or 2000000 " + (
        "(bytes), got 'lots'"
    )


def test_refusal_names_the_largest_max_items_that_fits():
    items, users = GOWALLA
    cpu = make_config("cpu", env={})
    resident = 2 * 2**30
    # the whole catalog does not fit in 24 GiB, and no cap does: the EASE baseline alone is too big
    limit = 24 * 2**30
    line = memory.refusal(memory.training_memory(items, users, cpu), users, cpu, resident, limit, "the memory budget")
    assert line.startswith(f"training {items:,} of {items:,} items needs about ")
    assert "more than the memory budget: 24.0 GiB" in line and "no --max-items fits" in line
    # with room for the baseline, the largest cap that fits is named, and it is the largest
    limit = resident + memory.training_memory(items, users, memory._with_max_items(cpu, 20_000)).peak + 1
    line = memory.refusal(memory.training_memory(items, users, cpu), users, cpu, resident, limit, "the memory budget")
    capped = int(re.search(r"--max-items ([\d,]+) fits with preset cpu", line).group(1).replace(",", ""))
    assert capped == 20_000

    def fits(n):
        estimate = memory.training_memory(items, users, memory._with_max_items(cpu, n))
        return memory.refusal(estimate, users, cpu, resident, limit, "the memory budget") is None

    assert fits(capped) and not fits(capped + 1)
    assert memory.refusal(memory.training_memory(items, users, cpu), users, cpu, resident, 10**15, "x") is None


def test_estimate_grows_with_the_catalog_and_the_kernel_dominates():
    cpu = make_config("cpu", env={})
    cpu = dataclasses.replace(cpu, model=dataclasses.replace(cpu.model, ease_prune_above=None))  # dense at 20k
    small, large = (memory.training_memory(n, 10_000, cpu) for n in (10_000, 20_000))
    assert set(large.phases) == {"fit", "baselines", "blend", "closed_form_init"}
    runtime = memory.training_memory(2, 10_000, cpu).peak  # next to nothing but the runtime
    kernel_share = (large.peak - small.peak) / (small.peak - runtime)
    assert 2.8 < kernel_share < 3.1  # quadratic in the items: (20k² - 10k²) / 10k² = 3
    assert memory.training_memory(20_000, 10_000, make_config("tiny", env={})).peak < large.peak
    capped = memory.training_memory(20_000, 10_000, memory._with_max_items(cpu, 10_000))
    assert capped.items == 10_000 and capped.catalog == 20_000 and small.peak < capped.peak < large.peak
    # the blend's choice holds item-wide arrays of the validation users on top of two EASE solutions
    users = memory.training_memory(20_000, 10_000, cpu, validation_users=5_000).phases["blend"] - large.phases["blend"]
    assert users == memory.BLEND_USER_ARRAYS * 4 * 5_000 * 20_000
    unblended = dataclasses.replace(cpu, model=dataclasses.replace(cpu.model, blend_ease=False))
    assert "blend" not in memory.training_memory(20_000, 10_000, unblended, validation_users=5_000).phases


def test_each_phase_gets_its_own_peak_and_the_run_keeps_the_highest():
    mib = 2**20
    tracker = memory.PeakTracker()
    block = np.ones(256 * mib, dtype=np.uint8)  # touched before the run: not the run's
    del block
    tracker.start()
    base = memory.resident_bytes()
    assert tracker.run < base + 64 * mib
    with tracker.phase("outer"):
        with tracker.phase("big"):
            block = np.ones(192 * mib, dtype=np.uint8)
            del block
        with tracker.phase("small"):
            block = np.ones(32 * mib, dtype=np.uint8)
            del block
    with tracker.phase("small"):  # measured again: the higher of the two stays
        pass
    peaks = tracker.phases
    assert list(peaks) == ["outer", "big", "small"]
    assert peaks["big"] >= base + 180 * mib and peaks["outer"] >= peaks["big"]
    assert peaks["small"] < base + 96 * mib  # the big block's peak restarted before it
    assert peaks["big"] <= tracker.run < base + 256 * mib
    run = tracker.run
    tracker.clear_phases()  # a new fit: its phases only, the run's peak kept
    assert tracker.phases == {} and run <= tracker.run < run + 16 * mib
    tracker.start()
    assert tracker.phases == {} and tracker.run < base + 96 * mib


def test_report_peak_warns_only_when_the_process_went_past_the_estimate(caplog):
    peak = memory.peak_resident_bytes()
    assert peak >= memory.resident_bytes() > 0
    with caplog.at_level("INFO", logger=memory.__name__):
        small = memory.TrainingMemory(1, 1, {"fit": 1000}, resident=peak // 2)
        assert memory.report_peak(small) >= peak
        large = memory.TrainingMemory(1, 1, {"fit": 2**50}, resident=peak)
        assert memory.report_peak(large) >= peak
    (over, within) = caplog.records
    assert over.levelname == "WARNING" and f", over the estimated {peak // 2 + 1000} " in over.getMessage()
    assert within.levelname == "INFO" and f", within the estimated {peak + 2**50} " in within.getMessage()


@pytest.mark.parametrize(
    "text, expected", [("16g", 16 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", 3 * 2**29), ("2000000", 2_000_000)]
)
def test_parse_bytes(text, expected):
    assert memory.parse_bytes(text) == expected


def test_memory_limit_prefers_the_budget_then_the_machine(monkeypatch):
    monkeypatch.setenv("VASP_MEMORY_BUDGET", "3g")
    assert memory.memory_limit(None, 10) == (3 * 2**30, "the memory budget")
    assert memory.memory_limit("1g", 10) == (2**30, "the memory budget")
    monkeypatch.delenv("VASP_MEMORY_BUDGET")
    free, origin = memory.available_bytes()
    limit, source = memory.memory_limit(None, 10)
    assert free and free > 0 and origin in source
    assert abs(limit - (10 + free)) < 2**30  # what is free moves a little between two reads


@pytest.mark.slow
def test_estimate_covers_the_measured_peak_of_a_real_run(spark, tmp_path_factory, tmp_path):
    """``vasp train`` in a fresh process: the peak resident set it logs at the end (its own ``VmHWM``) is within
    the estimate it logged before training. (``wait4``'s ``ru_maxrss`` is no measure of it: Linux counts
    in it the peak of the parent's memory the child ran in before its exec (subprocess spawns by vfork),
    here the test process's.)"""
    rng = np.random.default_rng(2)
    n_users, n_items = 1500, 1500
    users = np.repeat(np.arange(n_users), 40)
    items = rng.zipf(1.3, users.size) % n_items
    text = events_csv([f"u{u}" for u in users], [f"i{i}" for i in items])
    built, manifest = built_features(spark, tmp_path_factory, text, DATE, ab_copies=2)
    wh = str(tmp_path / "wh")
    copy_features(built, DATE, wh)

    cmd = [sys.executable, "-m", "vasp_model.cli", "train", "--warehouse", wh, "--date", DATE, "--preset", "tiny"]
    cmd += ["--epochs", "1", "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    cmd += ["--checkpoint-dir", str(tmp_path / "ckpt")]
    env = {k: v for k, v in os.environ.items() if k != "VASP_MEMORY_BUDGET"}
    # TensorFlow, which the estimate is calibrated on
    env.update(VASP_HOME=str(tmp_path / "run"), VASP_LOG_LEVEL="INFO", KERAS_BACKEND="tensorflow")
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    log = (tmp_path / "err").read_text()
    assert os.waitstatus_to_exitcode(status) == 0, log[-3000:]
    estimated = int(re.search(r"memory: \d+ resident, estimated peak (\d+)", log).group(1))
    measured, verdict, reported = re.search(
        r"memory: peak resident (\d+) \([^)]*\), (\w+) the estimated (\d+)", log
    ).groups()
    measured = int(measured)
    assert int(reported) == estimated and verdict == "within"
    assert manifest["counts"]["items"] > 1000
    assert 0 < measured <= usage.ru_maxrss * 1024
    assert measured <= estimated <= 1.5 * measured, (measured, estimated)
    # each phase's own peak (metrics.json, MLflow) within the estimate of the phase it belongs to
    resident = int(re.search(r"memory: (\d+) resident, estimated peak", log).group(1))
    # "fit N, baselines N, blend N[, closed_form_init N]"
    planned = re.search(r"estimated peak \d+ \(([^;]*);", log).group(1)
    estimate = {name: resident + int(n) for name, n in (part.split() for part in planned.split(", "))}
    phases = storage.read_json(f"{layout.models_dir(wh, DATE)}/metrics.json")["peak_resident_bytes"]
    for name in ("fit", "ease_fit", "blend", "vasp_eval", "baselines_eval", "protocol_metrics"):
        assert 0 < phases[name] <= measured
    assert phases["fit"] <= estimate["fit"]
    if "ease_init" in phases:
        assert phases["ease_init"] <= estimate["closed_form_init"]
    assert phases["blend"] <= estimate["blend"]
    baselines = estimate["baselines"]
    assert max(phases[n] for n in ("ease_fit", "vasp_eval", "baselines_eval", "protocol_metrics")) <= baselines


def test_ease_solve_bytes_by_hand():
    # 10 items, chunks of at most 5 entries: float64 = G (800) + max(chunk 80, copy 800 + 3 float32 solutions 1200)
    assert memory.ease_solve_bytes(10, "float64", 5) == 800 + 2000
    # float32 in place: the best solution and the Gram matrix being built (800) + the chunk (80)
    assert memory.ease_solve_bytes(10, "float32", 5) == 800 + 80
    assert memory.ease_solve_bytes(10, "float32") == 800 + 16 * 100  # unknown chunks: every I² pair


def test_ease_solve_bytes_count_the_blocked_solves_panels(monkeypatch):
    from vasp_model.recommenders import spd_inverse

    monkeypatch.setattr(spd_inverse, "THREADED_SOLVE_MAX_ROW_BYTES", 10 * 8 - 1)  # float64 rows of 10 go blockwise
    monkeypatch.setattr(spd_inverse, "SOLVE_BLOCK", 4)
    # the copy's solve adds three [10, 4] float64 panels (960) beside the three float32 solutions
    assert memory.ease_solve_bytes(10, "float64", 5) == 800 + 2000 + 960
    assert memory.ease_solve_bytes(10, "float32", 5) == 800 + 80  # float32 rows of 10 still go through LAPACK
    monkeypatch.setattr(spd_inverse, "THREADED_SOLVE_MAX_ROW_BYTES", 10 * 4 - 1)
    assert memory.ease_solve_bytes(10, "float32", 5) == 800 + 480  # its panels (480) outweigh the chunk (80)


def test_gram_chunk_entries_bound_the_sparse_products(monkeypatch):
    import scipy.sparse as sp

    from vasp_model.recommenders import baselines

    X = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    assert baselines.gram_chunk_entries(X) == 4 + 9 + 1
    monkeypatch.setattr(baselines, "GRAM_CHUNK_USERS", 2)
    assert baselines.gram_chunk_entries(X) == max(4 + 9, 1)
    G = baselines.EASE.gram(X)  # chunked the same way, same matrix
    np.testing.assert_array_equal(G, (X.T @ X).toarray())
    assert baselines.gram_chunk_entries(sp.csr_matrix(np.ones((3, 2)))) == 4  # at most I²


def test_a_capped_run_on_a_wide_catalog_fits_with_the_ease_baseline_in_float32():
    # Gowalla capped to 4,000 modelled items: the float64 EASE baseline over all 40,981 items does not
    # fit 22 GiB, the float32 one solved in place does (the chunks' entries as Gowalla's train users give them)
    items, users = GOWALLA
    capped = memory._with_max_items(make_config("cpu", env={}), 4_000)
    entries = 46_000_000
    assert memory.training_memory(items, users, capped, "float64", entries).peak > 22 * 2**30
    estimate, precision, _ = memory.check_training_memory(items, users, capped, "22g", gram_entries=entries)
    assert precision == "float32" and estimate.peak < 22 * 2**30
    small, precision, config = memory.check_training_memory(2_000, 1_000, capped, "22g", gram_entries=entries)
    assert precision == "float64" and config.model.neighbours_for(2_000) is None  # exact wherever it fits


def test_a_wide_catalog_trains_a_pruned_kernel_and_a_kernel_that_does_not_fit_is_pruned(caplog):
    # Gowalla's whole catalog: the cpu preset prunes a catalog that wide to 512 targets per item, which fits
    # 22 GiB over what this process holds with its EASE solves in float32 (the longest training row has 811 items)
    items, users = GOWALLA
    cpu, entries, row_items = make_config("cpu", env={}), 46_000_000, 811
    budget = str(memory.resident_bytes() + 22 * 2**30)
    with caplog.at_level("WARNING", logger=memory.__name__):
        estimate, precision, config = memory.check_training_memory(items, users, cpu, budget, entries, row_items)
    assert config.model.ease_neighbours == 512 and precision == "float32" and estimate.peak <= 22 * 2**30
    assert config.train == cpu.train and "does not fit" not in caplog.text
    dense = dataclasses.replace(cpu, model=dataclasses.replace(cpu.model, ease_prune_above=None))
    assert memory.training_memory(items, users, dense, "float32", entries, row_items).peak > 22 * 2**30
    # a dense kernel that does not fit the budget gives way to the widest pruned one that does, said in a warning
    n, u = 14_000, 10_000
    big = memory.training_memory(n, u, dense, "float32", None, 300).peak
    small = memory.training_memory(n, u, memory._with_neighbours(dense, 512), "float32", None, 300).peak
    budget = str(memory.resident_bytes() + (big + small) // 2)
    with caplog.at_level("WARNING", logger=memory.__name__):
        _, _, config = memory.check_training_memory(n, u, dense, budget, None, 300)
    assert config.model.ease_neighbours == 512
    assert "the dense Neural EASE kernel of 14,000 items does not fit" in caplog.text
    assert "training a pruned kernel of 512 targets per item" in caplog.text
    # the pruned kernel's estimate grows with k and with the longest row (its gathers), not with I²
    narrow = memory.training_memory(items, users, memory._with_neighbours(cpu, 64), "float32", entries, row_items)
    short_rows = memory.training_memory(items, users, memory._with_neighbours(cpu, 64), "float32", entries, 100)
    assert short_rows.phases["fit"] < narrow.phases["fit"] < estimate.phases["fit"]
    # a pruned kernel asked for is kept (or refused), never swapped for another
    asked = memory._with_neighbours(cpu, 128)
    assert memory.check_training_memory(items, users, asked, "22g", entries, row_items)[2].model.ease_neighbours == 128
    with pytest.raises(ValueError, match="needs about"):
        memory.check_training_memory(items, users, asked, "8g", entries, row_items)


def test_train_too_wide_for_the_device_is_refused_in_one_line(warehouse, tmp_path):
    proc = _vasp_train(warehouse, tmp_path, VASP_DEVICE_MEMORY="1k")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vasp train: error: fitting ") and "items with preset tiny needs about" in lines[0]
    assert "more than VASP_DEVICE_MEMORY: 0.0 GiB" in lines[0] and "no split over up to 64 devices fits" in lines[0]
    assert not storage.exists(layout.models_dir(warehouse, DATE))
    assert not (tmp_path / "ckpt").exists()


# -- scoring --------------------------------------------------------------------------------------


def _random_ease(n: int) -> np.ndarray:
    """An ``n × n`` EASE matrix of random weights (zero diagonal): what scoring costs does not depend on them."""
    B = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32) * np.float32(0.01)
    np.fill_diagonal(B, 0.0)
    return B


def _untrained_bundle(
    directory: str, item_ids, popularity, preset: str = "tiny", blend: float = 0.0, neighbours: int | None = None
) -> str:
    """An untrained VASP bundle of ``preset``'s size over this vocabulary (blended with a random EASE at ``blend``;
    its Neural EASE kernel pruned to ``neighbours`` targets per item, None: the preset's)."""
    from vasp_model.nn.model import build_model
    from vasp_model.recommenders.blend import EaseBlend
    from vasp_model.recommenders.bundle import ModelBundle

    n = len(item_ids)
    model = make_config(preset, env={}).model
    if neighbours is not None:
        model = dataclasses.replace(model, ease_neighbours=neighbours)
    bundle = ModelBundle(build_model(n, model, seed=0), item_ids, popularity)
    if blend:
        bundle.blend = EaseBlend(blend, _random_ease(n))
    return bundle.save(directory)


@pytest.fixture(scope="module")
def tiny_bundle(warehouse, tmp_path_factory) -> str:
    from vasp_model.data.features import load_items

    return _untrained_bundle(str(tmp_path_factory.mktemp("bundle") / "model"), *load_items(warehouse, DATE))


def test_score_whose_workers_do_not_fit_is_refused_in_one_line(warehouse, tiny_bundle, tmp_path):
    cmd = [sys.executable, "-m", "vasp_model.cli", "score", "--warehouse", warehouse, "--date", DATE]
    cmd += ["--model-uri", tiny_bundle, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "VASP_HOME": str(tmp_path / "run"), "VASP_MEMORY_BUDGET": "256m"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.strip().splitlines() if "vasp score" in line]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert (
        line.startswith("vasp score: error: scoring with this vasp model needs about ") and " GiB in each of " in line
    )
    assert "more than the memory budget: 0.2 GiB; not even one worker fits" in line and "VASP_MEMORY_BUDGET" in line
    assert not storage.exists(layout.recommendations_dir(warehouse, DATE))


def test_a_scoring_backend_keras_does_not_have_is_one_line_before_spark(warehouse, tiny_bundle, tmp_path):
    cmd = [sys.executable, "-m", "vasp_model.cli", "score", "--warehouse", warehouse, "--date", DATE]
    cmd += ["--model-uri", tiny_bundle, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "VASP_HOME": str(tmp_path / "run"), "VASP_SCORE_BACKEND": "mxnet"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "vasp score: error: VASP_SCORE_BACKEND must be one of numpy, jax, tensorflow, torch, got 'mxnet'"
    )
    assert not storage.exists(layout.recommendations_dir(warehouse, DATE))


def test_the_scoring_refusal_names_the_task_cpus_that_fit(spark, tiny_bundle, monkeypatch):
    from vasp_jobs.score import check_scoring_memory
    from vasp_model.recommenders.bundle import scoring_bytes

    cores = spark.sparkContext.defaultParallelism  # local[2]: two workers at one thread each
    per_worker = scoring_bytes(tiny_bundle, 2048, "numpy")  # the scoring job's default backend
    assert cores == 2 and per_worker > scoring_bytes(tiny_bundle, 16, "numpy")  # a batch's arrays count
    room_for = lambda workers: str(memory.tree_resident_bytes() + int(workers * per_worker))  # noqa: E731
    monkeypatch.setenv("VASP_MEMORY_BUDGET", room_for(1.5))
    with pytest.raises(ValueError, match=r"in each of 2 Python worker\(s\).*spark\.task\.cpus=2 fits \(1 worker"):
        check_scoring_memory(spark, tiny_bundle, 2048, threads=1)
    check_scoring_memory(spark, tiny_bundle, 2048, threads=2)  # one worker of two threads
    monkeypatch.setenv("VASP_MEMORY_BUDGET", room_for(2.5))
    check_scoring_memory(spark, tiny_bundle, 2048, threads=1)


_SCORING_PEAK_SCRIPT = """
import sys, numpy as np
from vasp_jobs.score import _bundle  # a scoring worker's own load: its thread limits, then the bundle
bundle = _bundle(sys.argv[1], "model", threads=1, backend=sys.argv[3])
bundle.batch_users = int(sys.argv[2])
rng = np.random.default_rng(0)
offsets = np.concatenate([[0], np.cumsum(rng.integers(5, 100, int(sys.argv[2])))])
bundle.recommend_flat(offsets, [str(i) for i in bundle.item_ids[rng.integers(0, bundle.n_items, offsets[-1])]], 100)
print("PEAK", [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
print("TENSORFLOW", "tensorflow" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "backend"),
    [("vasp-blended", "numpy"), ("vasp-blended", "tensorflow"), ("vasp-pruned", "numpy"), ("ease", "numpy")],
)
def test_scoring_estimate_covers_a_scoring_process_peak(tmp_path, kind, backend):
    """A fresh process loads a 4,000-item bundle (a blended cpu-preset VASP, dense or pruned, or EASE) as a scoring
    worker does (on Keras' NumPy backend, the scoring job's default, or on TensorFlow; the host path; its Numba
    kernels compiled as on a fresh install) and scores a batch of 2,048 users: its peak resident set is within
    ``scoring_bytes``, by at most 1.5x, and TensorFlow is imported only on its own backend."""
    from vasp_model.recommenders.bundle import EaseBundle, scoring_bytes

    n, batch = 4000, 2048
    ids, popularity = np.array([f"i{i}" for i in range(n)], dtype=object), np.arange(n)[::-1].copy()
    if kind == "ease":
        directory = EaseBundle(_random_ease(n), ids, popularity, {"lambda": 300.0}).save(str(tmp_path / kind))
    else:
        pruned = 64 if kind == "vasp-pruned" else None
        directory = _untrained_bundle(str(tmp_path / kind), ids, popularity, "cpu", blend=0.1, neighbours=pruned)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")  # the kernels compiled in the worker, as on a fresh install
    proc = subprocess.run(
        [sys.executable, "-c", _SCORING_PEAK_SCRIPT, directory, str(batch), backend],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = int(re.search(r"^PEAK (\d+)$", proc.stdout, re.M).group(1)) * 1024
    assert re.search(r"^TENSORFLOW (\w+)$", proc.stdout, re.M).group(1) == str(backend == "tensorflow")
    estimate = scoring_bytes(directory, batch, backend)
    assert peak <= estimate <= 1.5 * peak, (peak, estimate)
