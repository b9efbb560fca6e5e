"""The promotion rule and the rollback rule (vasp_model.mlops.gate), without MLflow.

Scores are binary fractions, so ``ease + margin`` is exact and a tie is a real tie.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from vasp_model.mlops import gate

D = "2026-03-03"
EPS = 2.0**-20
EASE = 0.25
PASSES = gate.Logged(candidate=0.5, ease=EASE)  # beats EASE by any margin below 0.25


def version(number: str, tags: dict[str, str] | None = None) -> gate.Version:
    return gate.Version(model="vasp", version=number, run_id=f"run{number}", tags=tags or {})


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    logged: gate.Logged
    margin: float = 0.0
    champion: str | None = None
    rescored: gate.Rescored | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    action: str = "rejected"
    reason: str = ""


ROWS = [
    # -- candidate vs EASE (first night: no champion, so EASE alone decides)
    Row("tie with EASE, margin 0", gate.Logged(EASE, EASE), reason="does not beat EASE: ndcg@100 0.25000 <= 0.25000"),
    Row("just above the margin", gate.Logged(0.375 + EPS, EASE), 0.125, action="promoted", reason="no champion yet"),
    Row("exactly at the margin", gate.Logged(0.375, EASE), 0.125, reason="<= 0.25000 + margin 0.125"),
    Row("just below the margin", gate.Logged(0.375 - EPS, EASE), 0.125, reason="does not beat EASE"),
    Row("below EASE, negative margin", gate.Logged(0.1875, EASE), -0.125, action="promoted", reason="margin -0.125"),
    Row("exactly at a negative margin", gate.Logged(0.125, EASE), -0.125, reason="does not beat EASE"),
    Row("below a negative margin", gate.Logged(0.125 - EPS, EASE), -0.125, reason="does not beat EASE"),
    Row("no EASE metric logged", gate.Logged(0.5, None), reason="run run3 has no test ndcg@100 for vasp and ease"),
    Row(
        "no candidate metric logged", gate.Logged(None, EASE), reason="run run3 has no test ndcg@100 for vasp and ease"
    ),
    # -- candidate vs champion, both re-scored (only once EASE is beaten)
    Row("tie with the champion", PASSES, champion="2", rescored=gate.Rescored(0.5, 0.5), reason="0.50000 <= 0.50000"),
    Row(
        "just beats the champion",
        PASSES,
        champion="2",
        rescored=gate.Rescored(0.5 + EPS, 0.5),
        action="promoted",
        reason="beats EASE: ndcg@100 0.50000 > 0.25000 + margin 0; beats champion v2 re-scored on 2026-03-03",
    ),
    Row(
        "just below the champion",
        PASSES,
        champion="2",
        rescored=gate.Rescored(0.5 - EPS, 0.5),
        reason="does not beat champion v2 re-scored on 2026-03-03",
    ),
    Row(
        "fails EASE: the champion is not re-scored", gate.Logged(EASE, EASE), champion="2", reason="does not beat EASE"
    ),
    # -- decisions that stand without scores
    Row(
        "candidate is the champion", PASSES, champion="3", action="already_champion", reason="candidate is the champion"
    ),
    Row(
        "rolled back earlier",
        PASSES,
        champion="2",
        tags={gate.TAG_ROLLED_BACK: "true"},
        action="unchanged",
        reason="candidate was promoted and rolled back; not promoting it again",
    ),
    Row(
        "promoted earlier, champion since replaced",
        PASSES,
        champion="4",
        tags={gate.TAG_DECISION: "promoted", gate.TAG_REASON: "beats EASE"},
        action="unchanged",
        reason="decided earlier (promoted): beats EASE; no longer champion, left as is",
    ),
    Row(
        "rejected earlier under the same champion and rule",
        PASSES,
        champion="2",
        tags={gate.TAG_DECISION: "rejected", gate.TAG_CHAMPION_AT_DECISION: "2", gate.TAG_GATE: "ndcg@100 margin=0"},
        action="unchanged",
        reason="decided earlier (rejected)",
    ),
    Row(
        "rejected earlier under another champion: the gate runs again",
        PASSES,
        champion="2",
        rescored=gate.Rescored(0.5 + EPS, 0.5),
        tags={gate.TAG_DECISION: "rejected", gate.TAG_CHAMPION_AT_DECISION: "1", gate.TAG_GATE: "ndcg@100 margin=0"},
        action="promoted",
    ),
    Row(
        "rejected earlier under another rule: the gate runs again",
        PASSES,
        champion="2",
        rescored=gate.Rescored(0.5 + EPS, 0.5),
        tags={gate.TAG_DECISION: "rejected", gate.TAG_CHAMPION_AT_DECISION: "2", gate.TAG_GATE: "ndcg@100 margin=1"},
        action="promoted",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name.replace(" ", "_") for row in ROWS])
def test_decide(row: Row):
    candidate = version("3", row.tags)
    before = gate.Aliases(champion=row.champion, previous="1" if row.champion else None)
    out = gate.decide(D, gate.Rule(margin=row.margin), candidate, before, row.logged, row.rescored)
    assert isinstance(out, gate.Outcome), out
    d = out.decision
    assert (d.action, d.candidate_version, d.champion_before) == (row.action, "3", row.champion)
    assert row.reason in d.reason
    assert d.promoted == (row.action in ("promoted", "already_champion"))
    if row.action == "promoted":
        assert d.champion_after == "3"
        assert out.aliases == gate.Aliases(champion="3", previous=row.champion)  # the replaced champion
        assert out.tags.get(gate.TAG_PREVIOUS_CHAMPION) == row.champion
    else:
        assert d.champion_after == row.champion and out.aliases == before
    if row.action in ("promoted", "rejected"):  # a new decision is recorded, the decision tag last
        assert list(out.tags)[-1] == gate.TAG_DECISION and out.tags[gate.TAG_DECISION] == row.action
        assert out.tags[gate.TAG_CHAMPION_AT_DECISION] == (row.champion or "none")
        assert out.tags[gate.TAG_GATE] == f"ndcg@100 margin={row.margin:g}"
        assert out.tags[gate.TAG_REASON] == d.reason and json.loads(out.tags[gate.TAG_METRICS]) == d.scores
    else:
        assert out.tags == {}


def test_a_candidate_that_beats_ease_needs_the_head_to_head_when_there_is_a_champion():
    before = gate.Aliases(champion="2")
    assert gate.decide(D, gate.Rule(), version("3"), before, PASSES) == gate.NeedsRescore("2")
    assert gate.settled(D, gate.Rule(), version("3"), before) is None
    out = gate.decide(D, gate.Rule(), version("3"), before, PASSES, gate.Rescored(0.5 + EPS, 0.5))
    assert out.decision.scores == {"candidate_logged": 0.5, "ease": EASE, "candidate": 0.5 + EPS, "champion": 0.5}


def test_a_promotion_stopped_before_its_decision_tag_records_it_on_the_rerun():
    """Killed after ``champion`` moved and before ``gate.decision``: the rerun finds the candidate champion
    and writes the decision; a champion the gate never decided on (set by hand) gets none."""
    before = gate.Aliases(champion="2")
    decided = gate.decide(D, gate.Rule(), version("3"), before, PASSES, gate.Rescored(0.5 + EPS, 0.5))
    written = {k: v for k, v in decided.tags.items() if k != gate.TAG_DECISION}
    rerun = gate.settled(D, gate.Rule(), version("3", written), decided.aliases)
    assert rerun.decision.action == "already_champion" and rerun.tags == {gate.TAG_DECISION: "promoted"}
    assert rerun.aliases == decided.aliases
    done = gate.settled(D, gate.Rule(), version("3", dict(decided.tags)), decided.aliases)
    assert done.tags == {}
    by_hand = gate.settled(D, gate.Rule(), version("3"), gate.Aliases(champion="3"))
    assert by_hand.tags == {}


def test_gate_decision_json_is_one_line_with_todays_fields():
    out = gate.decide(D, gate.Rule(margin=0.125), version("3"), gate.Aliases(), gate.Logged(0.5, EASE))
    line = out.decision.to_json()
    assert "\n" not in line
    assert json.loads(line) == {
        "date": D,
        "action": "promoted",
        "promoted": True,
        "candidate_version": "3",
        "champion_before": None,
        "champion_after": "3",
        "reason": "beats EASE: ndcg@100 0.50000 > 0.25000 + margin 0.125; no champion yet",
        "metric": "ndcg@100",
        "margin": 0.125,
        "scores": {"candidate_logged": 0.5, "ease": EASE},
        "require_significant": False,
        "serving": {},  # filled in by serving_after
    }


# -- the fallback -----------------------------------------------------------------------------------

POPULARITY = 0.125


@pytest.mark.parametrize(
    ("ease", "action", "reason"),
    [
        (0.25, "promoted", "beats popularity: ndcg@100 0.25000 > 0.12500 + margin 0; no champion yet"),
        (POPULARITY, "rejected", "does not beat popularity: ndcg@100 0.12500 <= 0.12500 + margin 0"),
        (None, "rejected", "run run1 has no test ndcg@100 for ease and popularity"),
    ],
)
def test_the_fallback_gate_is_the_same_rule_with_popularity_as_the_baseline(ease, action, reason):
    logged = gate.Logged(ease, POPULARITY, compared=gate.EASE_VS_POPULARITY)
    candidate = gate.Version(model=gate.EASE_REGISTERED_MODEL, version="1", run_id="run1")
    d = gate.decide(D, gate.Rule(), candidate, gate.Aliases(), logged).decision
    assert (d.action, d.reason) == (action, reason)
    assert d.scores == ({} if ease is None else {"candidate_logged": ease, "popularity": POPULARITY})


def test_what_serves_a_night():
    rejected = gate.decide(D, gate.Rule(), version("3"), gate.Aliases(), gate.Logged(0.125, EASE)).decision
    assert rejected.champion_after is None

    def ease(champion: str | None, reason: str) -> gate.GateDecision:
        return gate.GateDecision(D, "promoted" if champion == "7" else "rejected", False, "7", None, champion, reason)

    # a champion serves, whatever the fallback holds
    kept = dataclasses.replace(rejected, champion_before="2", champion_after="2")
    d = gate.serving_after(kept, "vasp", ease("7", "unused"), "vasp-ease")
    assert d.serving == {"kind": "vasp", "registered_model": "vasp", "version": "2"} and d.reason == kept.reason

    # no champion: the fallback's champion (today's EASE, or an earlier one), else popularity
    d = gate.serving_after(rejected, "vasp", ease("7", "beats popularity"), "vasp-ease")
    assert d.serving == {"kind": "ease", "registered_model": "vasp-ease", "version": "7"}
    assert d.reason == rejected.reason + "; no champion: serving fallback ease v7 (vasp-ease: beats popularity)"
    assert (d.action, d.promoted, d.champion_after) == ("rejected", False, None)  # VASP's decision stands
    d = gate.serving_after(rejected, "vasp", ease("5", "does not beat popularity"), "vasp-ease")
    assert d.serving == {"kind": "ease", "registered_model": "vasp-ease", "version": "5"}
    d = gate.serving_after(rejected, "vasp", ease(None, "does not beat popularity"), "vasp-ease")
    assert d.serving == {"kind": "popularity", "registered_model": None, "version": None}
    assert d.reason.endswith("; no champion: serving popularity (does not beat popularity)")
    d = gate.serving_after(rejected, "vasp")
    assert d.serving["kind"] == "popularity" and d.reason.endswith("(the EASE fallback is off)")
    assert json.loads(d.to_json())["serving"] == d.serving


# -- paired-bootstrap intervals ---------------------------------------------------------------------

SURE = gate.Bounds(0.125, 0.375)  # interval of a difference clearly above 0 (and above a margin of 0.0625)
UNSURE = gate.Bounds(-0.0625, 0.5)  # point estimate above, interval reaching below 0


@dataclasses.dataclass(frozen=True)
class SigRow:
    name: str
    require: bool
    ease: gate.Bounds | None
    champion: gate.Bounds | None = None  # None: no champion yet (first night)
    action: str = "rejected"
    reason: str = ""


SIG_ROWS = [
    # -- (a) vs EASE: the lower bound of VASP - EASE must exceed the margin (0.0625 here)
    SigRow("EASE interval clears the margin", True, SURE, action="promoted", reason="no champion yet"),
    SigRow("EASE interval reaches below the margin", True, UNSURE, reason="not significantly above EASE"),
    SigRow("EASE lower bound exactly at the margin", True, gate.Bounds(0.0625, 0.5), reason="<= margin 0.0625"),
    SigRow("no EASE interval logged", True, None, reason="run run3 logged no vasp_minus_ease interval"),
    SigRow("not required: an unsure interval passes", False, UNSURE, action="promoted", reason="[-0.06250, +0.50000]"),
    SigRow("not required: no interval passes", False, None, action="promoted", reason="no champion yet"),
    # -- (b) vs the champion re-scored on the same users: the lower bound of candidate - champion must exceed 0
    SigRow("champion interval above 0", True, SURE, SURE, action="promoted", reason="beats champion v2"),
    SigRow("champion interval reaches below 0", True, SURE, UNSURE, reason="not significantly above champion v2"),
    SigRow("champion lower bound exactly 0", True, SURE, gate.Bounds(0.0, 0.25), reason="[+0.00000, +0.25000] <= 0"),
    SigRow("not required: champion interval recorded", False, SURE, UNSURE, action="promoted", reason="[-0.06250,"),
]


@pytest.mark.parametrize("row", SIG_ROWS, ids=[row.name.replace(" ", "_") for row in SIG_ROWS])
def test_decide_with_intervals(row: SigRow):
    rule = gate.Rule(margin=0.0625, require_significant=row.require)
    before = gate.Aliases(champion="2" if row.champion else None)
    logged = gate.Logged(0.5, EASE, row.ease)  # the point estimates always pass
    rescored = gate.Rescored(0.5 + EPS, 0.5, row.champion) if row.champion else None
    out = gate.decide(D, rule, version("3"), before, logged, rescored)
    d = out.decision
    assert (d.action, d.require_significant) == (row.action, row.require), d.reason
    assert row.reason in d.reason
    assert out.tags[gate.TAG_GATE] == "ndcg@100 margin=0.0625" + (" significant" if row.require else "")
    # the intervals are recorded in the scores whenever known, required or not, and the reason gives the
    # interval of each comparison it reports (a rejection by the champion reports that comparison only)
    if row.ease is not None:
        assert (d.scores["vasp_minus_ease_low"], d.scores["vasp_minus_ease_high"]) == (row.ease.low, row.ease.high)
        assert (f"vasp_minus_ease interval {row.ease}" in d.reason) == (row.champion is None or d.promoted)
    else:
        assert "vasp_minus_ease_low" not in d.scores
    if row.champion is not None:
        assert (d.scores["candidate_minus_champion_low"], d.scores["candidate_minus_champion_high"]) == (
            row.champion.low,
            row.champion.high,
        )
        assert f"candidate_minus_champion interval {row.champion}" in d.reason
    assert json.loads(out.tags[gate.TAG_METRICS]) == d.scores


def test_a_decision_without_significance_is_made_again_when_it_is_required():
    rejected = version("3", {gate.TAG_DECISION: "rejected", gate.TAG_CHAMPION_AT_DECISION: "none"})
    loose, strict = gate.Rule(), gate.Rule(require_significant=True)
    recorded = version("3", {**rejected.tags, gate.TAG_GATE: loose.tag})
    assert gate.settled(D, loose, recorded, gate.Aliases()) is not None
    assert gate.settled(D, strict, recorded, gate.Aliases()) is None
    out = gate.decide(D, strict, recorded, gate.Aliases(), gate.Logged(0.5, EASE, UNSURE))
    assert out.decision.action == "rejected" and json.loads(out.decision.to_json())["require_significant"] is True


# -- rollback ---------------------------------------------------------------------------------------


class Registry:
    """The aliases and version tags MLflow would hold, with outcomes applied as the registry applies them."""

    def __init__(self):
        self.versions: dict[str, gate.Version] = {}
        self.aliases = gate.Aliases()

    def apply(self, candidate: gate.Version, outcome: gate.Outcome) -> gate.GateDecision:
        self.versions[candidate.version] = dataclasses.replace(candidate, tags={**candidate.tags, **outcome.tags})
        self.aliases = outcome.aliases
        return outcome.decision

    def promote(self, number: str, rescored: gate.Rescored | None = None) -> gate.GateDecision:
        candidate = self.versions.setdefault(number, version(number))
        out = gate.decide(D, gate.Rule(), candidate, self.aliases, PASSES, rescored)
        return self.apply(candidate, out)

    def rollback(self, number: str) -> gate.GateDecision:
        previous = self.versions.get(self.aliases.previous) if self.aliases.previous else None
        return self.apply(
            self.versions[number], gate.rollback(D, self.versions[number], self.aliases.champion, previous)
        )


def test_rollback_chain_walks_back_one_promotion_at_a_time():
    reg = Registry()
    better = gate.Rescored(0.5 + EPS, 0.5)
    assert [reg.promote(v, better).action for v in ("1", "2", "3")] == ["promoted"] * 3
    assert reg.aliases == gate.Aliases(champion="3", previous="2")

    d = reg.rollback("3")
    assert (d.action, d.champion_before, d.champion_after) == ("rolled_back", "3", "2")
    assert d.reason == f"rolled back v3 ({D}); champion is v2 again"
    assert reg.aliases == gate.Aliases(champion="2", previous="1")  # previous: the version v2 replaced
    assert reg.versions["3"].rolled_back

    d = reg.rollback("2")
    assert (d.action, d.champion_after) == ("rolled_back", "1")
    assert reg.aliases == gate.Aliases(champion="1", previous=None)  # v1 replaced nobody

    with pytest.raises(ValueError, match="registered model 'vasp' has no 'previous' version to roll back to"):
        reg.rollback("1")
    assert reg.aliases == gate.Aliases(champion="1")

    d = reg.rollback("3")  # again: nothing moves
    assert (d.action, d.reason) == ("unchanged", f"{D}'s version v3 was rolled back already; nothing to roll back")
    assert reg.promote("3").action == "unchanged" and reg.aliases == gate.Aliases(champion="1")


def test_rollback_with_nothing_before_is_a_clear_error():
    with pytest.raises(ValueError, match="no 'previous' version to roll back to"):
        gate.rollback(D, version("1"), champion="1", previous=None)


def test_rollback_of_a_version_that_is_not_champion_moves_nothing():
    out = gate.rollback(D, version("2"), champion="3", previous=version("1"))
    assert (out.decision.action, out.decision.promoted) == ("unchanged", False)
    assert out.decision.reason == f"{D}'s version v2 is not champion; nothing to roll back"
    assert out.aliases == gate.Aliases(champion="3", previous="1") and out.tags == {}


def test_a_past_date_moves_no_alias_and_says_so():
    aliases = gate.Aliases(champion="5", previous="4")
    outcome = gate.backfill(D, gate.Rule(), version("3"), aliases, later="2026-03-05")
    decision = outcome.decision
    assert outcome.aliases == aliases
    assert (decision.action, decision.promoted, decision.champion_before, decision.champion_after) == (
        "backfill",
        False,
        "5",
        "5",
    )
    assert decision.reason.startswith("backfill: champion not moved (a later night, 2026-03-05, is recorded")
    assert outcome.tags[gate.TAG_DECISION] == "backfill"
    assert outcome.tags[gate.TAG_CHAMPION_AT_DECISION] == "5"
    # not a decision that stands: once the date is no longer past (its later nights deleted), the gate runs
    tagged = version("3", dict(outcome.tags))
    assert gate.settled(D, gate.Rule(), tagged, aliases) is None
