"""The memory a training run needs at its peak, estimated before anything is allocated, and the
budget it has to fit in.

The estimate counts the arrays that grow with the catalog: the Neural EASE kernel (I×I float32, or
I×k when pruned, plus the [rows, widest row, k] gathers of a step) with its gradient, optimizer
slots and the early-stopping copy of the best weights; the closed-form EASE warm start (the Gram
matrix, its inverse and the float32 solution); the item-wide Dense layers with the same state; a
batch's item-wide activations; and the EASE baseline fitted after training over the whole catalog
while what the fit reached is still resident.
Each phase's peak is counted over what is resident when the check runs (the features), plus the
runtime Keras brings. The budget is ``VASP_MEMORY_BUDGET`` / ``--memory-budget`` (e.g. ``16g``),
else what is in use plus what the machine (``MemAvailable``) or the cgroup limit leaves free.
The fit's figure per device, the item axis split over several, is :func:`fit_bytes`'s
(:func:`vasp_model.train.sharding.check_device_memory` holds it against an accelerator's memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re

import numpy as np

from vasp_model.core.config import PRESETS, VaspConfig, make_config
from vasp_model.recommenders.spd_inverse import solve_workspace_bytes

FLOAT32, FLOAT64 = 4, 8
OPTIMIZER_SLOTS = {"nadam": 2, "adam": 2, "adamw": 2}
# Calibrated on the tensorflow backend against the peak RSS of real `vasp train` runs (tiny and cpu
# presets, 2k to 10k items): what Keras, its backend and MLflow add once loaded (logging the model
# loads it back to check its input example), and XLA when the train step is compiled; the I×I float32 temporaries of a train step beyond the kernel's state
# (gradient of the L2 term, the constraint's copy, the optimizer update); the item-wide float32
# tensors per batch row.
RUNTIME_BYTES = 1280 * 2**20
JIT_BYTES = 384 * 2**20
STEP_TEMPORARIES = 6
ACTIVATIONS = 4
# A pruned kernel's gather per (row, row item, neighbour): the weights taken, their target items, the cells
# they are added to (int32) and the gradient of the weights taken, with one more float32 as a margin.
PRUNED_GATHER_BYTES = 5 * FLOAT32
# The pruned kernels vasp train tries, widest first, when the one configured does not fit (k = 512 ranks as
# well as the dense kernel on the two whole catalogs measured: the README's Wide catalogs section).
FALLBACK_NEIGHBOURS = (512, 256, 128, 64)
# A sparse XᵀX chunk before it is added to the dense Gram matrix: float64 value + int32 column +
# int32 row (COO) per entry, at most I² entries.
SPARSE_GRAM_BYTES = 16
# The blend's choice over the validation users: VASP's probabilities at the served epoch and at another kept
# one, EASE's scores of a candidate λ, and the dense product's temporary, each [validation users × items] float32.
BLEND_USER_ARRAYS = 4
log = logging.getLogger(__name__)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclasses.dataclass(frozen=True)
class TrainingMemory:
    """Estimated bytes at the peak of each phase of a run, over what is resident before it."""

    items: int  # modelled items (the catalog, or ``max_items`` of it)
    catalog: int  # items of the features (the EASE baseline's width)
    phases: dict[str, int]
    resident: int = 0  # what the process held when the estimate was made

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def expected_peak(self) -> int:
        """The process's resident set expected at the run's peak."""
        return self.resident + self.peak


def dense_params(items: int, config: VaspConfig) -> int:
    """Parameters of the FLVAE path (every weight but the Neural EASE kernel) for ``items`` items."""
    m = config.model
    h, z = m.hidden, m.latent
    encoder = items * h + h + (m.encoder_blocks - 1) * (h * h + h) + 2 * h * m.encoder_blocks
    heads = 2 * (h * z + z)
    decoder = (z * h + h + (m.decoder_blocks - 1) * (h * h + h) + 2 * h * m.decoder_blocks) if m.decoder_blocks else 0
    outputs = (h if m.decoder_blocks else z) * items + items + z * items + items
    return encoder + heads + decoder + outputs


def weight_bytes_per_device(n_items: int, config: VaspConfig, model_devices: int = 1) -> int:
    """float32 bytes of VASP's weights on one device when the item axis is split ``model_devices`` ways
    (:mod:`vasp_model.train.sharding`: the items-wide ones divided, the rest replicated; 1: every weight)."""
    m = config.model
    # the two output Denses (kernel column + bias per item), then Neural EASE and the first encoder Dense
    per_item_outputs = ((m.hidden if m.decoder_blocks else m.latent) + 1 + m.latent + 1) * n_items
    pruned = m.neighbours_for(n_items) is not None  # a pruned Neural EASE kernel (I·k) is replicated
    kernel = _kernel_entries(n_items, config)
    items_wide = n_items * m.hidden + per_item_outputs + (0 if pruned else kernel)
    replicated = dense_params(n_items, config) - n_items * m.hidden - per_item_outputs + (kernel if pruned else 0)
    return FLOAT32 * (-(-items_wide // model_devices) + replicated)


def fit_bytes(
    items: int, train_users: int, config: VaspConfig, row_items: int | None = None, model_devices: int = 1
) -> int:
    """Peak bytes of the fit of ``items`` modelled items on one device, the item axis split ``model_devices``
    ways (1: the whole fit): every weight with its gradient, optimizer slots and the best epoch's copy, a
    step's temporaries over the Neural EASE kernel, a batch's item-wide activations and a pruned kernel's
    gathers (``row_items``: :func:`max_row_items`, default every item)."""
    m, t = config.model, config.train
    rows = 2 * min(t.batch_users, train_users)  # every batch whole on each device
    k = m.neighbours_for(items)
    if k is None:
        kernel, gather = -(-items * items // model_devices), 0
    else:  # replicated
        kernel, gather = items * k, PRUNED_GATHER_BYTES * rows * min(row_items or items, items) * k
    weights = weight_bytes_per_device(items, config, model_devices)
    activations = ACTIVATIONS * FLOAT32 * rows * -(-items // model_devices)
    return (3 + _slots(t)) * weights + STEP_TEMPORARIES * FLOAT32 * kernel + activations + gather


def _kernel_entries(items: int, config: VaspConfig) -> int:
    """Weights of the Neural EASE kernel: I², or I·k when pruned."""
    k = config.model.neighbours_for(items)
    return items * (items if k is None else k)


def _slots(train) -> int:
    """Copies of the weights the optimizer keeps (the moving average of the weights is one more slot, and the
    swap in and out of it one more copy)."""
    return OPTIMIZER_SLOTS[train.optimizer] + (0 if train.ema_momentum is None else 2)


def ease_solve_bytes(n: int, precision: str = "float64", gram_entries: int | None = None) -> int:
    """Peak bytes of EASE's λ search over ``n`` items (:func:`vasp_model.recommenders.baselines.fit_ease_on_validation`).

    float64: the Gram matrix, then the larger of a sparse XᵀX chunk and (its float64 copy + three
    float32 I×I arrays: the new solution, the best λ's, and one more as a margin). float32: the best
    λ's solution held while the next Gram matrix (solved in place) is built from sparse chunks.
    ``gram_entries`` bounds a chunk's entries (:func:`vasp_model.recommenders.baselines.gram_chunk_entries`;
    None: every I² pair). Either adds the solve's own panels
    (:func:`vasp_model.recommenders.spd_inverse.solve_workspace_bytes`), which the chunks no longer share.
    """
    chunk = SPARSE_GRAM_BYTES * (n * n if gram_entries is None else min(n * n, gram_entries))
    if precision == "float64":
        return FLOAT64 * n * n + max(chunk, (FLOAT64 + 3 * FLOAT32) * n * n + solve_workspace_bytes(n, FLOAT64))
    return 2 * FLOAT32 * n * n + max(chunk, solve_workspace_bytes(n, FLOAT32))


def max_row_items(features, n_items: int) -> int:
    """The most of the ``n_items`` modelled items in one row the fit feeds the model (training users and the
    validation users' fold-ins; never a test user): what a pruned Neural EASE kernel reads per row
    (:class:`vasp_model.nn.layers.PrunedNeuralEASE`'s ``max_positives``), so that every row it is
    trained and selected on is read whole."""
    rows = [features.train, features.validation.fold_in]
    return max(max(int(np.diff(m[:, :n_items].tocsr().indptr).max(initial=0)) for m in rows), 1)


def batch_items(features, n_items: int, batch_users: int) -> int:
    """:func:`batch_positives_for` a training batch of ``batch_users`` users (their A and B rows hold their
    whole training rows)."""
    lengths = np.diff(features.train[:, :n_items].tocsr().indptr)
    if lengths.size == 0:
        return 1
    return batch_positives_for(batch_users * float(lengths.mean()), int(lengths.max()))


def batch_positives_for(mean_nonzeros: float, widest_row: int) -> int:
    """1.5 times a batch's mean nonzeros plus its widest row: what a pruned Neural EASE kernel reads a batch
    through as such (:class:`vasp_model.nn.layers.PrunedNeuralEASE`'s ``batch_positives``; a fuller batch
    is read row by row, to the same logits)."""
    return math.ceil(1.5 * mean_nonzeros) + widest_row + 1


def training_memory(
    catalog_items: int,
    train_users: int,
    config: VaspConfig,
    ease_precision: str = "float64",
    gram_entries: int | None = None,
    row_items: int | None = None,
    validation_users: int = 0,
) -> TrainingMemory:
    """The peak bytes of each phase of training ``config`` on ``catalog_items`` items and ``train_users``
    users, the EASE baselines (and the closed-form init) solved in ``ease_precision`` (``gram_entries``: see
    :func:`ease_solve_bytes`; ``row_items``: :func:`max_row_items`, default every item), the blend chosen on
    ``validation_users`` users."""
    if catalog_items < 1 or train_users < 1:
        raise ValueError(f"need items and train users, got {catalog_items} items, {train_users} users")
    m, t = config.model, config.train
    items = catalog_items if m.max_items is None else min(m.max_items, catalog_items)
    weights = weight_bytes_per_device(items, config)
    fit = fit_bytes(items, train_users, config, row_items)
    # the EASE baseline is fitted on the whole catalog while what the fit reached is still resident: the
    # backend keeps the fit's allocations, not only the trained weights (measured by phase on Gowalla's shape)
    phases = {"fit": fit, "baselines": fit + ease_solve_bytes(catalog_items, ease_precision, gram_entries)}
    if m.blend_ease:  # two EASE solutions (float32, the λ and another factor's) and the users' item-wide arrays
        blend_arrays = BLEND_USER_ARRAYS * FLOAT32 * validation_users * items
        phases["blend"] = fit + 2 * FLOAT32 * catalog_items * catalog_items + blend_arrays
    if m.ease_init == "closed_form":
        phases["closed_form_init"] = weights + ease_solve_bytes(items, ease_precision, gram_entries)
    runtime = RUNTIME_BYTES + (0 if t.jit_compile is False else JIT_BYTES)  # "auto" may compile
    return TrainingMemory(items, catalog_items, {k: v + runtime for k, v in phases.items()})


def parse_bytes(text: str) -> int:
    """``"16g"``, ``"512M"``, ``"1.5GiB"``, ``"2000000"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"memory budget must be a size like 16g, 512m or 2000000 (bytes), got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_bytes() -> int:
    """This process's resident set now (``VmRSS``; 0 where /proc is missing)."""
    return _proc_kib("/proc/self/status", "VmRSS") or 0


def tree_resident_bytes() -> int:
    """The resident set of this process and every process it started, and theirs (e.g. Spark's JVM), now
    (``VmRSS`` from /proc; this process's alone where /proc lists no others)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])  # after the command's name
            except (OSError, IndexError, ValueError):  # gone since listed
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += _proc_kib(f"/proc/{pid}/status", "VmRSS") or 0
        todo += children.get(pid, [])
    return total


def peak_resident_bytes() -> int:
    """This process's peak resident set since it started (``VmHWM``, which an exec starts again; 0 where
    /proc is missing)."""
    return _proc_kib("/proc/self/status", "VmHWM") or 0


def _restart_peak() -> None:
    """Start ``VmHWM`` again from what this process holds now (where ``/proc/self/clear_refs`` can be written:
    Linux 4.0 and later)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class PeakTracker:
    """The peak resident set of a run and of each named phase of it. ``VmHWM`` is the process's, so one
    tracker serves the process (:data:`process_peaks`): each phase starts it again, and what it read before
    counts toward the run's peak and toward the phases still open (phases may nest)."""

    def __init__(self) -> None:
        self._phases: dict[str, int] = {}
        self._open: list[str] = []
        self._run = 0

    def start(self) -> None:
        """A new run: its peak counts from what the process holds now, no phase measured yet."""
        self._phases.clear()
        self._run = 0
        _restart_peak()

    def clear_phases(self) -> None:
        """Forget the phases measured so far (a new fit in the same run), keeping the run's peak."""
        self._fold()
        self._phases.clear()

    def _fold(self) -> None:
        peak = peak_resident_bytes()
        self._run = max(self._run, peak)
        for name in self._open:
            self._phases[name] = max(self._phases.get(name, 0), peak)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Measure the block as phase ``name`` (the highest peak when it runs more than once)."""
        self._fold()
        self._open.append(name)
        _restart_peak()
        try:
            yield
        finally:
            self._fold()
            self._open.remove(name)

    @property
    def phases(self) -> dict[str, int]:
        """Peak bytes of each phase measured since :meth:`start` (or :meth:`clear_phases`), in the order they were
        first entered."""
        return dict(self._phases)

    @property
    def run(self) -> int:
        """The peak since :meth:`start`: the highest of every reading and of ``VmHWM`` now."""
        self._fold()
        return self._run


process_peaks = PeakTracker()


def report_peak(estimate: TrainingMemory) -> int:
    """Log this process's peak resident set since ``estimate`` was made (:func:`check_training_memory` starts
    :data:`process_peaks`) beside the estimated one, with the phase that reached it (a warning when it went
    past the estimate, so a budget that trusted it can be widened); returns the peak."""
    peak, phases = process_peaks.run, process_peaks.phases
    over = peak > estimate.expected_peak
    (log.warning if over else log.info)(
        "memory: peak resident %d (%s%s), %s the estimated %d (%s)%s",
        peak, gib(peak), f", in {max(phases, key=phases.get)}" if phases else "", "over" if over else "within",
        estimate.expected_peak, gib(estimate.expected_peak),
        "; by phase: " + ", ".join(f"{k} {gib(v)}" for k, v in phases.items()) if phases else "",
    )  # fmt: skip
    return peak


def available_bytes() -> tuple[int | None, str]:
    """(bytes this process can still allocate, where that figure comes from): the machine's
    ``MemAvailable``, or the cgroup's limit minus its usage when that is lower; None if neither is known."""
    found: list[tuple[int, str]] = []
    machine = _proc_kib("/proc/meminfo", "MemAvailable")
    if machine is not None:
        found.append((machine, "MemAvailable"))
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 2**60:
            found.append((max(cap - used, 0), "cgroup limit"))
            break
    return min(found) if found else (None, "unknown")


def largest_max_items(catalog_items: int, train_users: int, config: VaspConfig, budget: int, **sizing) -> int | None:
    """The largest ``max_items`` whose run fits in ``budget`` bytes of peak (None: not even 2 items);
    ``sizing``: :func:`training_memory`'s ``ease_precision`` / ``gram_entries`` / ``validation_users``."""

    def fits(n: int) -> bool:
        return training_memory(catalog_items, train_users, _with_max_items(config, n), **sizing).peak <= budget

    if not fits(2):
        return None
    lo, hi = 2, catalog_items
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def memory_limit(budget: str | None = None, resident: int = 0) -> tuple[int | None, str]:
    """(peak bytes a run may reach, where the figure comes from): ``budget`` (a size), else
    ``VASP_MEMORY_BUDGET``, else ``resident`` plus what is available (None when unknown)."""
    budget = budget or os.environ.get("VASP_MEMORY_BUDGET") or None
    if budget:
        return parse_bytes(budget), "the memory budget"
    free, origin = available_bytes()
    return (None if free is None else resident + free), f"in use + available ({origin})"


def refusal(
    estimate: TrainingMemory, train_users: int, config: VaspConfig, resident: int, limit: int, source: str, **sizing
) -> str | None:
    """Why a run of ``estimate`` does not fit in ``limit`` bytes with ``resident`` in use, and what
    would fit (the largest ``--max-items``, other presets) sized like it (``sizing``: see
    :func:`largest_max_items`); None when it fits."""
    need = resident + estimate.peak
    if need <= limit:
        return None
    config = resolved(config, estimate.items)  # the same kernel for every --max-items tried
    room, catalog = limit - resident, estimate.catalog
    phase = max(estimate.phases, key=estimate.phases.get)
    fixes = []
    capped = largest_max_items(catalog, train_users, config, room, **sizing)
    if capped is None:
        alone = resident + training_memory(catalog, train_users, _with_max_items(config, 2), **sizing).peak
        fixes.append(f"no --max-items fits: the EASE baseline over all {catalog:,} items alone needs {gib(alone)}")
    elif capped < estimate.items:
        fixes.append(f"--max-items {capped:,} fits with preset {config.preset}")
    for name in PRESETS:
        other = make_config(name, {"max_items": config.model.max_items})
        if name != config.preset and training_memory(catalog, train_users, other, **sizing).peak <= room:
            fixes.append(f"preset {name} fits")
    return (
        f"training {estimate.items:,} of {catalog:,} items needs about {gib(need)} at its peak ({phase}), "
        f"more than {source}: {gib(limit)}; {'; '.join(fixes) or 'nothing smaller fits'} "
        "(VASP_MEMORY_BUDGET or --memory-budget sets the budget)"
    )


def check_training_memory(
    catalog_items: int,
    train_users: int,
    config: VaspConfig,
    budget: str | None = None,
    gram_entries: int | None = None,
    row_items: int | None = None,
    validation_users: int = 0,
) -> tuple[TrainingMemory, str, VaspConfig]:
    """(the estimate of a run, the precision its EASE solves use, the config it fits as) within
    :func:`memory_limit` (``budget``, else ``VASP_MEMORY_BUDGET``, else what is available): ``config``, its
    Neural EASE kernel resolved for the catalog (:func:`resolved`), with float64 solves, else float32 solved
    in place; when neither fits and no ``ease_neighbours`` was asked for, the widest narrower pruned kernel of
    :data:`FALLBACK_NEIGHBOURS` that fits (said in a warning). ``ValueError`` with :func:`refusal`'s line when
    nothing fits."""
    from vasp_model.recommenders.baselines import EASE_PRECISIONS

    resident = resident_bytes()
    limit, source = memory_limit(budget, resident)
    items = catalog_items if config.model.max_items is None else min(config.model.max_items, catalog_items)
    asked = config.model.ease_neighbours is not None
    config = resolved(config, items)
    configured = config.model.ease_neighbours
    candidates = [config]
    if not asked:
        narrower = min(configured or items, items - 1)
        candidates += [_with_neighbours(config, n) for n in FALLBACK_NEIGHBOURS if n < narrower]
    for candidate in candidates:
        for precision in EASE_PRECISIONS:  # the float64 solve first: exact where it fits
            estimate = dataclasses.replace(
                training_memory(
                    catalog_items, train_users, candidate, precision, gram_entries, row_items, validation_users
                ),
                resident=resident,
            )
            log.info(
                "memory: %d resident, estimated peak %d (%s; EASE in %s, Neural EASE %s), limit %s (%s)",
                resident, estimate.expected_peak, ", ".join(f"{k} {v}" for k, v in estimate.phases.items()),
                precision, candidate.model.ease_neighbours or "dense", limit, source,
            )  # fmt: skip
            if limit is None or estimate.expected_peak <= limit:
                process_peaks.start()  # what report_peak reads is the peak of the run just estimated
                if candidate is not config:
                    log.warning(
                        "the %s Neural EASE kernel of %s items does not fit %s (%s): training a pruned kernel "
                        "of %d targets per item (--ease-neighbours)",
                        "dense" if configured is None else f"{configured}-target", f"{estimate.items:,}", gib(limit), source,
                        candidate.model.ease_neighbours,
                    )  # fmt: skip
                return estimate, precision, candidate
    sizing = {
        "ease_precision": EASE_PRECISIONS[-1],
        "gram_entries": gram_entries,
        "validation_users": validation_users,
    }
    estimate = training_memory(catalog_items, train_users, config, row_items=row_items, **sizing)
    raise ValueError(refusal(estimate, train_users, config, resident, limit, source, **sizing))


def resolved(config: VaspConfig, items: int) -> VaspConfig:
    """``config`` with its Neural EASE kernel over ``items`` modelled items made explicit: ``ease_neighbours``
    set to the pruned kernel's targets per item (:meth:`ModelConfig.neighbours_for`), or, for the dense
    kernel, no ``ease_prune_above`` rule left (a search over ``max_items`` then keeps the same kernel)."""
    k = config.model.neighbours_for(items)
    model = dataclasses.replace(
        config.model, ease_neighbours=k, ease_prune_above=None if k is None else config.model.ease_prune_above
    )
    return dataclasses.replace(config, model=model)


def _with_neighbours(config: VaspConfig, k: int) -> VaspConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, ease_neighbours=k))


def _with_max_items(config: VaspConfig, n: int) -> VaspConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, max_items=n))
