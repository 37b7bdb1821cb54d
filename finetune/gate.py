"""The promotion gate: pure logic, no I/O.

A candidate becomes champion only if (1) it passes the sanity floor on every dataset, and, when there is a
champion, (2) its mean dev macro-F1 beats the champion's by more than ``min_improvement``, (3) no dataset's
macro-F1 falls by more than ``tolerance`` and, when ``min_confidence`` is set, (4) it beats the champion's mean in at
least that share of paired bootstrap resamples of the dev rows. Both sides must be measured on the same rows (the
fine-tune run re-scores the champion on the candidate's dev rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reasons: list[str]
    candidate_score: float
    champion_score: float | None = None
    deltas: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reasons": self.reasons,
            "candidate_mean_macro_f1": round(self.candidate_score, 4),
            "champion_mean_macro_f1": None if self.champion_score is None else round(self.champion_score, 4),
            "deltas": {k: round(v, 4) for k, v in self.deltas.items()},
        }


def _f1(metrics: Mapping[str, Any]) -> float:
    return float(metrics.get("macro_f1", 0.0))


def decide(
    candidate: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Mapping[str, Any]] | None,
    *,
    tolerance: float,
    min_improvement: float = 0.0,
    min_macro_f1: float = 0.0,
    better_share: float | None = None,
    min_confidence: float = 0.0,
) -> GateDecision:
    """Decide on per-dataset dev metrics (``{dataset: {"macro_f1": ...}}``) of a candidate vs the champion.

    ``better_share``: in how many paired resamples of the dev rows the candidate's mean macro-F1 beat the
    champion's (:func:`finetune.evaluate.paired_summary`), or None when no such comparison was made; with
    ``min_confidence`` above 0 a missing comparison refuses, since the check cannot be skipped silently."""
    if not candidate:
        return GateDecision(False, ["the candidate has no dev metrics"], 0.0)
    reasons: list[str] = []
    cand_mean = sum(_f1(m) for m in candidate.values()) / len(candidate)
    for name, m in sorted(candidate.items()):
        if _f1(m) < min_macro_f1:
            reasons.append(f"{name}: dev macro-F1 {_f1(m):.4f} is below the sanity floor {min_macro_f1:.4f}")
    if champion is None:
        return GateDecision(not reasons, reasons or ["no champion yet: promoted after the sanity check"], cand_mean)
    missing = sorted(set(champion) - set(candidate))
    if missing:
        reasons.append(f"the candidate was not evaluated on {', '.join(missing)}")
    common = sorted(set(champion) & set(candidate))
    if not common:
        reasons.append("no dataset in common with the champion to compare on")
        return GateDecision(False, reasons, cand_mean)
    deltas = {name: _f1(candidate[name]) - _f1(champion[name]) for name in common}
    cand_common = sum(_f1(candidate[n]) for n in common) / len(common)
    champ_common = sum(_f1(champion[n]) for n in common) / len(common)
    if cand_common <= champ_common + min_improvement:
        reasons.append(
            f"mean dev macro-F1 {cand_common:.4f} does not beat the champion's {champ_common:.4f}"
            + (f" by more than {min_improvement:.4f}" if min_improvement else "")
        )
    if min_confidence > 0:
        if better_share is None:
            reasons.append(
                f"no paired comparison with the champion on the same dev rows, so the required confidence "
                f"({min_confidence:.1%} of resamples) cannot be checked"
            )
        elif better_share < min_confidence:
            reasons.append(
                f"the candidate's mean dev macro-F1 beats the champion's in {better_share:.1%} of paired resamples "
                f"of the dev rows, less than the required {min_confidence:.1%}"
            )
    for name, delta in deltas.items():
        if delta < -tolerance:
            reasons.append(
                f"{name}: dev macro-F1 falls by {-delta:.4f} ({_f1(champion[name]):.4f} -> {_f1(candidate[name]):.4f}),"
                f" more than the tolerance {tolerance:.4f}"
            )
    accepted = not reasons
    if accepted:
        reasons.append(f"mean dev macro-F1 {champ_common:.4f} -> {cand_common:.4f}; no dataset fell beyond {tolerance}")
    return GateDecision(accepted, reasons, cand_common, champ_common, deltas)
