"""Memory limits per worker: a cgroup left behind by an earlier process of the same pid
(killed before it cleaned up) does not stop a new scan's worker from getting its limit."""

from __future__ import annotations

import pytest

from facescan_operator.memlimit import Enforcement, MemoryLimiter


def test_a_stale_cgroup_of_the_same_name_is_replaced() -> None:
    limiter = MemoryLimiter.detect()
    if limiter.enforcement is not Enforcement.CGROUP_V1 or limiter.base is None:
        pytest.skip("needs a writable cgroup v1 memory controller (root, as in CI here)")
    try:
        (limiter.base / "local-vm-1").mkdir()  # as a SIGKILLed scan of this pid left it

        slot = limiter.slot("local-vm-1", 256 << 20)

        assert slot.path is not None
        assert (slot.path / "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
    finally:
        limiter.close()
    assert not limiter.base.exists()
