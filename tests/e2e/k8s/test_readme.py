"""The README's "Try it on a local control plane" lines, run as written (in a folder of
the test's instead of /tmp/k8s): a dev cluster with its PostgreSQL, the CRD, the example
FaceScan over the sample photos, scanned to Completed with their faces."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from facescan_devcluster import controlplane

from .cluster import ROOT

MARKER = "`tests/e2e/k8s/test_readme.py` runs exactly"


def readme_lines() -> str:
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARKER) :]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match is not None, "the README's try-it block"
    return match[1]


@pytest.mark.slow
def test_the_readme_scans_the_samples_on_a_local_control_plane(tmp_path: Path) -> None:
    where = tmp_path / "k8s"
    script = readme_lines().replace("/tmp/k8s", str(where))
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "FACESCAN_DSN")}
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired as exc:
        output = f"(timed out) {exc.output!r}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the operator, if the lines stopped early
        controlplane.down(where)
        proc.wait()
    log = where / "operator.log"
    operator_log = log.read_text()[-3000:] if log.exists() else ""
    assert proc.returncode == 0, f"{output}\noperator.log:\n{operator_log}"
    table = output[output.index("NAME") :].split()
    assert table[7:12] == ["family-photos", "Completed", "6/6", "11", "0"], output
    assert "password" not in output.lower()
    assert (where / "database.dsn").read_text().split(":")[2].split("@")[0] not in output
