"""The promotion rule of the registry gate and of its rollback, as pure functions of plain data.

The candidate version registered for date ``D`` becomes alias ``champion`` only if

(a) its test metric, logged by its own run, beats EASE's (same run, same test users) by more
    than the margin (strictly), and
(b) re-scored on D's test users, it beats the current champion re-scored the same way (strictly).

With ``require_significant`` the lower end of each paired-bootstrap interval must clear the same
bar: (a) that of VASP − EASE logged by the run must exceed the margin, (b) that of candidate −
champion on the re-scored users must exceed 0. The intervals are recorded in the decision's scores
and reason whenever they are known, required or not.

The first night (no champion) only (a) applies. While the registered model has no champion, a
night is still served (:func:`serving_after`): by the champion of the fallback, closed-form EASE
registered as a model of its own and gated by the same rule against popularity, else by popularity.
VASP only serves when it won. The replaced champion gets alias ``previous``
and the candidate records it (tag ``gate.previous_champion``), so that rollbacks walk back one
promotion at a time. Every decision is recorded on the candidate as ``gate.*`` tags; a rerun for
the same date returns the recorded decision unless the champion or the rule changed since. A
version that was rolled back is never promoted again. A past date (a later night is recorded)
moves no alias: its candidate stays registered and the gate records ``backfill``
(:func:`backfill`).

No MLflow here: :mod:`vasp_model.mlops.registry` reads the registry into :class:`Version` /
:class:`Aliases`, calls :func:`decide` or :func:`rollback` and writes the :class:`Outcome` back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

GATE_METRIC = "ndcg@100"
CHAMPION = "champion"
PREVIOUS = "previous"
TAG_DECISION = "gate.decision"  # promoted | rejected | backfill
TAG_REASON = "gate.reason"
TAG_CHAMPION_AT_DECISION = "gate.champion_version"  # champion when the decision was made ("none")
TAG_PREVIOUS_CHAMPION = "gate.previous_champion"  # champion this version replaced
TAG_ROLLED_BACK = "gate.rolled_back"
TAG_METRICS = "gate.metrics"
TAG_GATE = "gate.rule"  # metric and margin the decision used
MAX_REASON = 4000  # characters of the reason kept in its tag
EASE_REGISTERED_MODEL = "vasp-ease"  # default registered model of the fallback (closed-form EASE)
VASP_VS_EASE = ("vasp", "ease")  # (candidate, baseline): their entries in the training run's report
EASE_VS_POPULARITY = ("ease", "popularity")  # the fallback's gate
_LABELS = {"vasp": "VASP", "ease": "EASE"}  # how reasons name a report entry


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """The outcome of ``vasp promote`` for one date (printed as one JSON line)."""

    date: str
    action: str  # promoted | rejected | backfill | already_champion | unchanged | rolled_back
    promoted: bool  # is the date's candidate the champion after this call?
    candidate_version: str | None
    champion_before: str | None
    champion_after: str | None
    reason: str
    metric: str = GATE_METRIC
    margin: float = 0.0
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    require_significant: bool = False
    serving: dict[str, str | None] = dataclasses.field(default_factory=dict)  # kind, registered_model, version

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=float)

    @classmethod
    def unchanged(cls, date: str, candidate: str, champion: str | None, reason: str, **gate) -> GateDecision:
        """A decision that moves no alias (``gate``: ``metric``, ``margin``, ``scores``, ``require_significant``)."""
        return cls(date, "unchanged", champion == candidate, candidate, champion, champion, reason, **gate)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What the candidate is compared on, by how much it must beat EASE, and whether the intervals must too."""

    metric: str = GATE_METRIC
    margin: float = 0.0
    require_significant: bool = False
    protocol: str = "vae_cf"  # vae_cf: held-out test users; temporal: the next period (D - h, D]

    @property
    def tag(self) -> str:
        protocol = "" if self.protocol == "vae_cf" else f"{self.protocol} "
        return f"{protocol}{self.metric} margin={self.margin:g}" + (" significant" if self.require_significant else "")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The paired-bootstrap interval of a difference (candidate minus the other model)."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"[{self.low:+.5f}, {self.high:+.5f}]"


@dataclasses.dataclass(frozen=True)
class Version:
    """A registered model version as the gate sees it."""

    model: str  # the registered model's name
    version: str
    run_id: str = ""
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def rolled_back(self) -> bool:
        return self.tags.get(TAG_ROLLED_BACK) == "true"


@dataclasses.dataclass(frozen=True)
class Aliases:
    """Which version holds ``champion`` and ``previous`` (None: nobody)."""

    champion: str | None = None
    previous: str | None = None


@dataclasses.dataclass(frozen=True)
class Logged:
    """The candidate's and the baseline's test metric from the candidate's run, and the run's interval
    of their difference (None: not logged); ``compared``: their entries in the run's report (the
    baseline is EASE unless it says otherwise)."""

    candidate: float | None
    ease: float | None
    interval: Bounds | None = None
    compared: tuple[str, str] = VASP_VS_EASE

    @property
    def baseline(self) -> str:
        return _LABELS.get(self.compared[1], self.compared[1])


@dataclasses.dataclass(frozen=True)
class Rescored:
    """The candidate and the champion, both re-scored on the date's test users, and the interval of
    candidate − champion over those users."""

    candidate: float
    champion: float
    interval: Bounds | None = None


@dataclasses.dataclass(frozen=True)
class NeedsRescore:
    """:func:`decide` cannot finish without :class:`Rescored` scores against this champion."""

    champion: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A decision, the aliases after it, and the tags it records on the candidate."""

    decision: GateDecision
    aliases: Aliases
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


def settled(date: str, rule: Rule, candidate: Version, aliases: Aliases) -> Outcome | None:
    """The outcome that stands without any score, or None when the gate has to run.

    Standing: the candidate is the champion; it was rolled back; it was promoted earlier; it was
    rejected earlier under the same champion and rule (a new champion or rule runs the gate again).
    """
    cand, champ = candidate.version, aliases.champion
    if champ == cand:
        reason = "candidate is the champion"
        decision = GateDecision(date, "already_champion", True, cand, champ, champ, reason, **_gate(rule))
        # a promotion stopped after its aliases moved and before its last tag: record the decision it made
        interrupted = TAG_CHAMPION_AT_DECISION in candidate.tags and TAG_DECISION not in candidate.tags
        return Outcome(decision, aliases, {TAG_DECISION: "promoted"} if interrupted else {})
    if candidate.rolled_back:
        reason = "candidate was promoted and rolled back; not promoting it again"
        return Outcome(GateDecision.unchanged(date, cand, champ, reason, **_gate(rule)), aliases)
    tags = candidate.tags
    recorded = tags.get(TAG_DECISION)
    same_gate = tags.get(TAG_CHAMPION_AT_DECISION) == (champ or "none") and tags.get(TAG_GATE) == rule.tag
    if recorded == "promoted" or (recorded == "rejected" and same_gate):
        try:
            scores = json.loads(tags.get(TAG_METRICS, "{}"))
        except ValueError:
            scores = {}
        reason = f"decided earlier ({recorded}): {tags.get(TAG_REASON, '')}" + (
            "" if recorded != "promoted" else "; no longer champion, left as is"
        )
        decision = GateDecision.unchanged(date, cand, champ, reason, scores=scores, **_gate(rule))
        return Outcome(decision, aliases)
    return None


def _gate(rule: Rule) -> dict:
    return {"metric": rule.metric, "margin": rule.margin, "require_significant": rule.require_significant}


def _interval(label: str, bounds: Bounds | None) -> tuple[str, dict[str, float]]:
    """The text a reason gets and the scores a decision records for ``bounds`` (nothing without them)."""
    if bounds is None:
        return "", {}
    return f" ({label} interval {bounds})", {f"{label}_low": bounds.low, f"{label}_high": bounds.high}


def _insignificant(bounds: Bounds | None, bar: float, bar_text: str, subject: str, missing: str) -> str | None:
    """Why ``bounds``' lower end does not clear ``bar`` (``missing`` without bounds); None when it does."""
    if bounds is None:
        return missing
    return None if bounds.low > bar else f"not significantly above {subject} interval {bounds} <= {bar_text}"


def decide(
    date: str,
    rule: Rule,
    candidate: Version,
    aliases: Aliases,
    logged: Logged,
    rescored: Rescored | None = None,
) -> Outcome | NeedsRescore:
    """The gate for ``date``'s candidate (module docstring); :class:`NeedsRescore` until ``rescored`` is given
    for a candidate that passed EASE while a champion exists."""
    if (done := settled(date, rule, candidate, aliases)) is not None:
        return done
    metric, margin, champ = rule.metric, rule.margin, aliases.champion
    if logged.candidate is None or logged.ease is None:
        missing = f"run {candidate.run_id} has no test {metric} for {' and '.join(logged.compared)}"
        return _rejected(date, rule, candidate, aliases, missing, {})
    difference = "_minus_".join(logged.compared)
    vs_baseline, baseline_bounds = _interval(difference, logged.interval)
    scores = {"candidate_logged": logged.candidate, logged.compared[1]: logged.ease, **baseline_bounds}
    if not logged.candidate > logged.ease + margin:
        reason = (
            f"does not beat {logged.baseline}: {metric} {logged.candidate:.5f} <= {logged.ease:.5f} + margin {margin:g}"
        )
        return _rejected(date, rule, candidate, aliases, reason + vs_baseline, scores)
    if rule.require_significant and (
        why := _insignificant(
            logged.interval,
            margin,
            f"margin {margin:g}",
            f"{logged.baseline}: {metric} lower bound of {difference}",
            f"run {candidate.run_id} logged no {difference} interval of test {metric}",
        )
    ):
        return _rejected(date, rule, candidate, aliases, why, scores)
    reason = (
        f"beats {logged.baseline}: {metric} {logged.candidate:.5f} > {logged.ease:.5f} + margin {margin:g}"
        + vs_baseline
    )
    if champ is None:
        return _promoted(date, rule, candidate, aliases, reason + "; no champion yet", scores)
    if rescored is None:
        return NeedsRescore(champ)
    vs_champion, champion_bounds = _interval("candidate_minus_champion", rescored.interval)
    scores |= {"candidate": rescored.candidate, "champion": rescored.champion, **champion_bounds}
    head_to_head = f"champion v{champ} re-scored on {date}"
    if not rescored.candidate > rescored.champion:
        reason = f"does not beat {head_to_head}: {rescored.candidate:.5f} <= {rescored.champion:.5f}" + vs_champion
        return _rejected(date, rule, candidate, aliases, reason, scores)
    if rule.require_significant and (
        why := _insignificant(
            rescored.interval,
            0.0,
            "0",
            f"{head_to_head}: lower bound of candidate_minus_champion",
            f"no candidate_minus_champion interval of {head_to_head}",
        )
    ):
        return _rejected(date, rule, candidate, aliases, why, scores)
    reason += f"; beats {head_to_head}: {rescored.candidate:.5f} > {rescored.champion:.5f}" + vs_champion
    return _promoted(date, rule, candidate, aliases, reason, scores)


def backfill(date: str, rule: Rule, candidate: Version, aliases: Aliases, later: str) -> Outcome:
    """``date`` is past (``later``: a later recorded night): no alias moves, whatever the candidate scores.
    The candidate stays registered; the decision is recorded on it (and taken again on a rerun)."""
    reason = f"backfill: champion not moved (a later night, {later}, is recorded; {date}'s v{candidate.version} "
    reason += "stays registered, not gated)"
    tags = _record(rule, aliases, reason, {}) | {TAG_DECISION: "backfill"}
    champ = aliases.champion
    decision = GateDecision(date, "backfill", False, candidate.version, champ, champ, reason, **_gate(rule))
    return Outcome(decision, aliases, tags)


def _record(rule: Rule, aliases: Aliases, reason: str, scores: Mapping[str, float]) -> dict[str, str]:
    return {
        TAG_METRICS: json.dumps(scores, sort_keys=True),
        TAG_CHAMPION_AT_DECISION: aliases.champion or "none",
        TAG_GATE: rule.tag,
        TAG_REASON: reason[:MAX_REASON],
    }


def _promoted(date, rule: Rule, candidate: Version, aliases: Aliases, reason: str, scores) -> Outcome:
    cand, champ = candidate.version, aliases.champion
    tags = _record(rule, aliases, reason, scores)
    if champ is not None:
        tags[TAG_PREVIOUS_CHAMPION] = champ
    tags[TAG_DECISION] = "promoted"
    after = Aliases(champion=cand, previous=aliases.previous if champ is None else champ)
    decision = GateDecision(date, "promoted", True, cand, champ, cand, reason, scores=dict(scores), **_gate(rule))
    return Outcome(decision, after, tags)


def _rejected(date, rule: Rule, candidate: Version, aliases: Aliases, reason: str, scores) -> Outcome:
    champ = aliases.champion
    tags = _record(rule, aliases, reason, scores) | {TAG_DECISION: "rejected"}
    decision = GateDecision(
        date, "rejected", False, candidate.version, champ, champ, reason, scores=dict(scores), **_gate(rule)
    )
    return Outcome(decision, aliases, tags)


def rollback(date: str, candidate: Version, champion: str | None, previous: Version | None) -> Outcome:
    """Undo ``date``'s promotion: ``champion`` goes back to ``previous`` (the version holding that
    alias; ValueError when none does), and ``previous`` to the version that one had replaced (none:
    the alias goes away). Only the champion can be rolled back; otherwise nothing moves.
    """
    cand = candidate.version
    before = Aliases(champion, previous.version if previous is not None else None)
    if champion != cand:
        state = "was rolled back already" if candidate.rolled_back else "is not champion"
        reason = f"{date}'s version v{cand} {state}; nothing to roll back"
        return Outcome(GateDecision.unchanged(date, cand, champion, reason), before)
    if previous is None:
        raise ValueError(f"registered model {candidate.model!r} has no {PREVIOUS!r} version to roll back to")
    prev = previous.version
    older = previous.tags.get(TAG_PREVIOUS_CHAMPION)
    after = Aliases(champion=prev, previous=older if older and older != prev else None)
    reason = f"rolled back v{cand} ({date}); champion is v{prev} again"
    decision = GateDecision(date, "rolled_back", False, cand, champion, prev, reason)
    return Outcome(decision, after, {TAG_ROLLED_BACK: "true"})


# -- what serves ----------------------------------------------------------------------------------


def serving_after(
    decision: GateDecision, registered_model: str, fallback: GateDecision | None = None, ease_model: str = ""
) -> GateDecision:
    """``decision`` (the gate's for the date) with what serves the date: the champion of
    ``registered_model``; with none, the champion of the fallback ``ease_model`` after ``fallback`` (its
    own gate's decision for the date; None: the EASE fallback is off), else popularity. The reason says
    which, and why."""
    if decision.champion_after is not None:
        return dataclasses.replace(decision, serving=_serving("vasp", registered_model, decision.champion_after))
    if fallback is not None and fallback.champion_after is not None:
        serving = _serving("ease", ease_model, fallback.champion_after)
        note = f"serving fallback ease v{fallback.champion_after} ({ease_model}: {fallback.reason})"
    else:
        serving = _serving("popularity")
        note = "serving popularity (" + (fallback.reason if fallback is not None else "the EASE fallback is off") + ")"
    return dataclasses.replace(decision, serving=serving, reason=f"{decision.reason}; no champion: {note}")


def _serving(kind: str, registered_model: str | None = None, version: str | None = None) -> dict[str, str | None]:
    return {"kind": kind, "registered_model": registered_model, "version": version}
