"""Step 8: unknown metrics never scale down. Missing data is not zero load: hold."""

from __future__ import annotations

from .reasons import Code, Reason
from .types import Proposal, Signals


def unknowns(current: int, signals: Signals, unknown_critical: tuple[str, ...], proposal: Proposal) -> Proposal:
    if not (unknown_critical or signals.request_rate is None):
        return proposal
    if proposal.replicas >= current:
        # Nor does the scale-down window remember fewer than today's count from unknown data.
        return Proposal(proposal.replicas, proposal.reasons) if proposal.load_asks is not None else proposal
    if unknown_critical:  # step 1 already said which signals are unknown
        return proposal.to(current)
    return proposal.to(current, Reason(Code.METRICS_UNKNOWN, f"not scaling down to {proposal.replicas}: requestRate unknown"))
