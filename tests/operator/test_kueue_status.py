"""A FineTuneJob queued on Kueue says why in Kueue's own words (pure; the Workload's conditions)."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge.finetune.status import QUEUED, kueue_wait

PENDING = ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
           "h100, 4 more needed")
PREEMPTED = ("Preempted to accommodate a workload (UID: 1f, JobUID: 2e) due to prioritization in the ClusterQueue")


def _wl(*conds: tuple[str, str, str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "job-x-train-1-ab12c"},
            "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conds]}}


@pytest.mark.parametrize(("workload", "reason", "message"), [
    (None, "WaitingForKueue", "Waiting for Kueue to admit the Job from queue gpu"),
    (_wl(), "WaitingForKueue", "Waiting for Kueue to admit the Job from queue gpu"),
    (_wl(("QuotaReserved", "False", "Pending", PENDING)), "WaitingForKueue", f"Kueue queue gpu: Pending: {PENDING}"),
    (_wl(("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cq")),
     "WaitingForKueue", "Kueue reserved quota in queue gpu; admitting the Job"),
    (_wl(("QuotaReserved", "False", "Pending", PENDING), ("Evicted", "True", "Preempted", PREEMPTED)),
     "PreemptedByKueue", f"Kueue evicted the Job (Preempted: {PREEMPTED}); waiting to be admitted again from "
                         f"queue gpu (Pending: {PENDING})"),
    (_wl(("Evicted", "True", "InactiveWorkload", "The workload is deactivated")),
     "EvictedByKueue", "Kueue evicted the Job (InactiveWorkload: The workload is deactivated); waiting to be "
                       "admitted again from queue gpu"),
    # An eviction that is over (False) is history: the current wait is what counts.
    (_wl(("QuotaReserved", "False", "Pending", PENDING), ("Evicted", "False", "Preempted", PREEMPTED)),
     "WaitingForKueue", f"Kueue queue gpu: Pending: {PENDING}"),
])
def test_kueue_wait(workload: dict[str, Any] | None, reason: str, message: str) -> None:
    info = kueue_wait("gpu", workload)
    assert (info.phase, info.reason, info.message) == (QUEUED, reason, message)
