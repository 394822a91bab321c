"""The node agent's pure parts: what a container of the project's images runs (the same as
their Dockerfiles say), how a container's paths resolve inside its root, quantities and
$(VAR) references as a kubelet reads them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from facescan_devcluster.pod import memory_bytes
from facescan_devcluster.podexec import _inside
from facescan_devcluster.volumes import IMAGE_CONFIG, expand
from tests.unit.test_dockerfiles import parse

REPO = Path(__file__).resolve().parents[3]
DOCKERFILES = {
    "*facescan-operator*": REPO / "operator" / "Dockerfile",
    "*facescan-detector*": REPO / "detector_image" / "Dockerfile",
}


def _exec_form(args: str) -> list[str]:
    return list(json.loads(args)) if args.startswith("[") else shlex.split(args)


@pytest.mark.parametrize("pattern", sorted(DOCKERFILES))
def test_the_agent_runs_an_image_as_its_dockerfile_says(pattern: str) -> None:
    _, stages = parse(DOCKERFILES[pattern])
    final = stages[-1]
    entrypoint, cmd, user = IMAGE_CONFIG[pattern]
    assert _exec_form(final.all("ENTRYPOINT")[-1]) == entrypoint
    assert _exec_form(final.all("CMD")[-1]) == cmd
    assert final.all("USER")[-1].split(":")[0] == str(user)


def test_a_container_path_follows_links_inside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # absolute: the container's /run
    (root / "opt").mkdir()
    (root / "opt" / "current").symlink_to("v2")  # relative
    assert _inside(root, "/var/run/secrets/token") == root / "run" / "secrets" / "token"
    assert _inside(root, "/opt/current/bin") == root / "opt" / "v2" / "bin"
    assert _inside(root, "/data") == root / "data"
    (root / "loop").symlink_to("/loop")
    assert _inside(root, "/loop/x").is_relative_to(root)  # a cycle ends, inside the root


def test_quantities_and_references_as_a_kubelet_reads_them() -> None:
    assert memory_bytes("100Mi") == 100 * 2**20
    assert memory_bytes("1.5Gi") == 3 * 2**29
    assert memory_bytes("2G") == 2 * 10**9
    assert memory_bytes("1048576") == 2**20
    assert memory_bytes(None) is None
    with pytest.raises(ValueError, match="Invalid number format"):
        memory_bytes("lots")
    env = {"WHO": "me"}
    assert expand("p-$(WHO)", env) == "p-me"
    assert expand("$$(WHO) $(NONE)", env) == "$(WHO) $(NONE)"
