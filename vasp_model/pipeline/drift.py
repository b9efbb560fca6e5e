"""Drift rules of the morning report: what a night's figures must not do, with configurable thresholds.

Each rule compares tonight with the previous night or the median of the last nights and, when it
is off, yields a flag ``{"rule", "message", "value", "threshold"}``. Thresholds come from
:class:`DriftConfig` (``VASP_DRIFT_*`` environment variables). A comparison whose reference is
unavailable (first night, a deleted partition) raises no flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vasp_model.core import settings

RULES = ("volume_drop", "volume_rise", "new_items", "vanished_items", "churn", "coverage_drop", "fallback_rise")


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift rules (env ``VASP_DRIFT_<NAME>``); shares are fractions (0.3 = 30%)."""

    drift_volume_drop: float = 0.3  # input rows below the last nights' median by more than this share
    drift_volume_rise: float = 0.5  # input rows above that median by more than this share
    drift_new_items: float = 0.05  # share of tonight's items that the previous night did not have
    drift_vanished_items: float = 0.05  # share of the previous night's items gone tonight
    drift_churn: float = 0.5  # 1 - mean Jaccard of each user's list vs the previous night, the same model serving
    drift_churn_new_model: float = 1.0  # the same, when another model serves than last night (1: never flagged)
    drift_coverage_drop: float = 0.2  # catalog coverage of the lists below the previous night's by this share
    drift_fallback_rise: float = 0.05  # share of users served by a fallback up by more than this (absolute)
    drift_window: int = 7  # nights in the median of the volume rules

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "drift_window":
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"drift_window must be an integer >= 1, got {value!r}")
            elif not isinstance(value, int | float) or not 0 <= value:
                raise ValueError(f"{field.name} must be a number >= 0, got {value!r}")


def load_drift_config(overrides: Mapping[str, Any] | None = None) -> DriftConfig:
    return settings.build_config(DriftConfig, overrides)


def _flag(rule: str, message: str, value: float, threshold: float) -> dict[str, Any]:
    return {"rule": rule, "message": message, "value": round(float(value), 4), "threshold": float(threshold)}


def evaluate(tonight: Mapping[str, Any], comparison: Mapping[str, Any], config: DriftConfig) -> list[dict[str, Any]]:
    """The flags of one night: ``tonight`` (its figures) against ``comparison`` (vs the previous night
    and the median of the last ``drift_window`` nights; missing keys: unavailable, no flag)."""
    flags = []
    median_rows = comparison.get("median_input_rows")
    if median_rows:
        ratio = tonight["input_rows"] / median_rows - 1
        if ratio < -config.drift_volume_drop:
            flags.append(
                _flag(
                    "volume_drop",
                    f"input rows {tonight['input_rows']:,} are {-ratio:.0%} below the median of the last nights "
                    f"({median_rows:,.0f})",
                    ratio,
                    -config.drift_volume_drop,
                )
            )
        if ratio > config.drift_volume_rise:
            flags.append(
                _flag(
                    "volume_rise",
                    f"input rows {tonight['input_rows']:,} are {ratio:.0%} above the median of the last nights "
                    f"({median_rows:,.0f})",
                    ratio,
                    config.drift_volume_rise,
                )
            )
    for rule, key, limit, what in (
        ("new_items", "new_item_share", config.drift_new_items, "of tonight's items are new"),
        ("vanished_items", "vanished_item_share", config.drift_vanished_items, "of last night's items vanished"),
    ):
        share = comparison.get(key)
        if share is not None and share > limit:
            count = comparison[key.replace("_share", "s")]
            flags.append(_flag(rule, f"{share:.1%} {what} ({len(count)} items)", share, limit))
    jaccard = comparison.get("mean_jaccard")
    # A new champion changes the lists by the gate's decision (the report's gate table says so); the rule
    # is about lists that move while the same model serves, i.e. moved by the data.
    limit = config.drift_churn_new_model if comparison.get("model_changed") else config.drift_churn
    if jaccard is not None and 1 - jaccard > limit:
        cause = " with another model serving" if comparison.get("model_changed") else ""
        flags.append(
            _flag(
                "churn",
                f"lists changed{cause}: mean Jaccard vs last night {jaccard:.2f} (churn {1 - jaccard:.0%})",
                1 - jaccard,
                limit,
            )
        )
    previous_coverage = comparison.get("previous_coverage")
    if previous_coverage:
        drop = 1 - tonight["coverage"] / previous_coverage
        if drop > config.drift_coverage_drop:
            flags.append(
                _flag(
                    "coverage_drop",
                    f"the lists cover {tonight['coverage']:.1%} of the catalog, {drop:.0%} less than last night "
                    f"({previous_coverage:.1%})",
                    drop,
                    config.drift_coverage_drop,
                )
            )
    previous_fallback = comparison.get("previous_fallback_share")
    if previous_fallback is not None and tonight.get("fallback_share") is not None:
        rise = tonight["fallback_share"] - previous_fallback
        if rise > config.drift_fallback_rise:
            flags.append(
                _flag(
                    "fallback_rise",
                    f"{tonight['fallback_share']:.1%} of users were served by a fallback "
                    f"(last night {previous_fallback:.1%})",
                    rise,
                    config.drift_fallback_rise,
                )
            )
    return flags
