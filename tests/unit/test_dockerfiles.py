"""The detector's container images, read without a Docker engine: they run as a non-root
user, carry no secret, start ``facescan-detector run``, install the project with its
``detector`` extra, and copy only what the build context (after .dockerignore) holds."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "cpu": REPO / "detector_image" / "Dockerfile",
    "cuda": REPO / "detector_image" / "Dockerfile.cuda",
}
SECRET_WORDS = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|DSN|PGPASS", re.IGNORECASE)
DETECTOR_UID = 10001
"""The uid the operator's Job builder runs detector pods as (runAsUser)."""


@dataclass
class Stage:
    """One FROM ... section: its base image and its instructions, in order."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[list[tuple[str, str]], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages of a Dockerfile.

    Handles comments, blank lines and backslash continuations (comment lines inside a
    continued instruction are dropped, as Docker does)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: the last instruction ends with a continuation"
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            stages.append(Stage(base=args.split()[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        else:
            preamble.append((keyword, args))
    return preamble, stages


def env_pairs(args: str) -> list[tuple[str, str]]:
    """``ENV A=1 B="2 3"`` or the legacy ``ENV A 1`` -> [(name, value), ...]."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [(w.partition("=")[0], w.partition("=")[2]) for w in words]


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops this path or one of its parent directories."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], pattern[3:])
            ):
                return True
    return False


@pytest.fixture(params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> Path:
    path: Path = DOCKERFILES[request.param]
    return path


def test_final_stage_runs_as_the_detector_uid_not_root(dockerfile: Path) -> None:
    _, stages = parse(dockerfile)
    users = stages[-1].all("USER")
    assert users, f"{dockerfile.name}: the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0")
    assert group not in ("root", "0")
    # numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd
    assert (int(user), int(group)) == (DETECTOR_UID, DETECTOR_UID)
    runs = " ".join(stages[-1].all("RUN"))
    assert f"--uid {DETECTOR_UID}" in runs  # named in /etc/passwd too (getpass, libpq)


def test_no_env_or_arg_carries_a_secret(dockerfile: Path) -> None:
    preamble, stages = parse(dockerfile)
    instructions = preamble + [i for stage in stages for i in stage.instructions]
    for keyword, args in instructions:
        if keyword == "ENV":
            for name, value in env_pairs(args):
                assert not SECRET_WORDS.search(name), f"{dockerfile.name}: ENV {name}"
                assert not SECRET_WORDS.search(value), f"{dockerfile.name}: ENV {name}={value}"
        if keyword == "ARG":
            assert not SECRET_WORDS.search(args), f"{dockerfile.name}: ARG {args}"
        if keyword == "RUN":
            assert "--mount=type=secret" not in args  # a secret would be needed to rebuild


def test_entrypoint_is_the_detector_and_its_command_is_run(dockerfile: Path) -> None:
    _, stages = parse(dockerfile)
    final = stages[-1]
    assert [json.loads(a) for a in final.all("ENTRYPOINT")] == [["facescan-detector"]]
    assert [json.loads(a) for a in final.all("CMD")] == [["run"]]


def test_the_project_is_installed_with_its_detector_extra(dockerfile: Path) -> None:
    _, stages = parse(dockerfile)
    installs = [
        command
        for stage in stages
        for run in stage.all("RUN")
        for command in re.split(r"&&|;", run)
        if re.search(r"\bpip install\b", command)
    ]
    assert any(
        ".[detector]" in (word.strip("'\"") for word in shlex.split(command))
        for command in installs
    ), installs


def test_home_and_temporary_files_live_in_tmp_for_a_read_only_root(dockerfile: Path) -> None:
    _, stages = parse(dockerfile)
    env = dict(pair for args in stages[-1].all("ENV") for pair in env_pairs(args))
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_everything_copied_is_in_the_build_context(dockerfile: Path) -> None:
    _, stages = parse(dockerfile)
    patterns = dockerignore()
    for stage in stages:
        for args in stage.all("COPY"):
            words = args.split()
            if any(word.startswith("--from=") for word in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: missing"
                assert not ignored(source, patterns), f"{dockerfile.name}: {source} ignored"


def test_cpu_image_is_python_slim() -> None:
    _, stages = parse(DOCKERFILES["cpu"])
    assert {stage.base for stage in stages} == {"python:3.11-slim"}


def test_cuda_image_has_cudnn_and_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    preamble, stages = parse(DOCKERFILES["cuda"])
    args = dict(a.partition("=")[::2] for kw, a in preamble if kw == "ARG")
    base = args["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:")
    assert "cudnn" in base
    assert "runtime" in base
    runs = " && ".join(run for stage in stages for run in stage.all("RUN"))
    commands = [c.strip() for c in re.split(r"&&|;", runs)]
    uninstall = next(i for i, c in enumerate(commands) if "pip uninstall -y onnxruntime" in c)
    gpu = next(i for i, c in enumerate(commands) if "onnxruntime-gpu" in c and "install" in c)
    assert uninstall < gpu  # both at once leave a broken mix of files


def test_dockerignore_keeps_out_the_virtualenv_git_and_caches() -> None:
    patterns = dockerignore()
    for path in (".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "bench/out"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "sql", "operator", "detector_image"):
        assert not ignored(path, patterns), path
