"""The operator's Prometheus series, as a scrape would read them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from facescan_operator.k8s import metrics


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _status(by_type: dict[str, int], done: int = 3) -> dict[str, object]:
    counts = {"pending": 1, "leased": 2, "done": done, "faces": 7, "by_error_type": by_type}
    return {"counts": counts, "activeJobs": 2}


def test_a_scan_is_told_apart_by_namespace_and_its_series_follow_the_status() -> None:
    metrics.record("ns-a", "photos", _status({"decode": 2}), [("j1", "gpu")], 1, {})
    metrics.record("ns-b", "photos", _status({}, done=9), [], 0, {})

    assert _value("facescan_images", namespace="ns-a", scan="photos", state="done") == 3
    assert _value("facescan_images", namespace="ns-b", scan="photos", state="done") == 9
    assert _value("facescan_failing_images", namespace="ns-a", scan="photos", type="decode") == 2
    assert _value("facescan_jobs_created_total", namespace="ns-a", scan="photos", pool="gpu") == 1
    assert _value("facescan_oom_killed_total", namespace="ns-a", scan="photos") == 1

    # the decode failures were requeued and succeeded: the gauge reads 0, not its last value
    metrics.record("ns-a", "photos", _status({}), [], 0, {})
    assert _value("facescan_failing_images", namespace="ns-a", scan="photos", type="decode") == 0

    metrics.forget("ns-a", "photos")
    assert _value("facescan_images", namespace="ns-a", scan="photos", state="done") is None
    assert _value("facescan_images", namespace="ns-b", scan="photos", state="done") == 9
    metrics.forget("ns-b", "photos")


def test_finished_attempts_add_up_by_outcome_and_type() -> None:
    tick = {("done", None): 5, ("failed", "oom"): 1}
    metrics.record("ns", "lib", _status({}), [], 0, tick)
    metrics.record("ns", "lib", _status({}), [], 0, {("done", None): 2})

    assert (
        _value("facescan_attempts_total", namespace="ns", scan="lib", outcome="done", type="") == 7
    )
    assert (
        _value("facescan_attempts_total", namespace="ns", scan="lib", outcome="failed", type="oom")
        == 1
    )
    metrics.forget("ns", "lib")
