"""The chart's migration hook Job (database.migrateJob): off by default, and when on a
pre-install/pre-upgrade hook running `facescan db migrate` with the URL from the
Secret the admin names, valid for Kubernetes and as locked down as the operator."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from helm_python import HelmValuesError, lint

from .test_chart import CHART, NEWEST, OLDEST, of_kind, render

ON = {
    "database": {
        "existingSecret": "photos-db",
        "migrateJob": {"enabled": True, "secretName": "facescan-owner"},
    }
}


def _job(values: dict[str, Any]) -> dict[str, Any]:
    (job,) = of_kind(render(values), "Job")
    return job


def test_the_chart_migrates_nothing_by_default() -> None:
    assert of_kind(render({}), "Job") == []


@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
def test_the_hook_job_runs_facescan_db_migrate_with_the_named_secret(kube: str) -> None:
    linted = lint(str(CHART), ON, strict=True, kube_version=f"{kube}.0")
    assert linted["errors"] == []
    assert [m for m in linted["messages"] if m["severity"] > 1] == []
    job = _job(ON)
    kubernetes_validate.validate(job, kube, strict=True)
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["db", "migrate"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FACESCAN_DSN"]["valueFrom"]["secretKeyRef"] == {
        "name": "facescan-owner",
        "key": "dsn",
    }
    assert "serviceAccountName" not in pod  # the chart's does not exist yet at pre-install
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # not one of the operator Deployment's pods
    (deployment,) = of_kind(render(ON), "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items()


def test_the_hook_job_needs_a_secret_name() -> None:
    with pytest.raises(HelmValuesError, match="secretName"):
        render({"database": {"existingSecret": "x", "migrateJob": {"enabled": True}}})
