"""The container images, read without a Docker engine: the detector's run as a non-root
user, carry no secret and start ``facescan-detector run``; every image installs its
dependencies from a hashed lock file and the project alone, leaves no pip in the image
that runs, names its base images by tag or digest, and copies only what the build
context (after .dockerignore) holds."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "cpu": REPO / "detector_image" / "Dockerfile",
    "cuda": REPO / "detector_image" / "Dockerfile.cuda",
}
ALL_DOCKERFILES = {**DOCKERFILES, "operator": REPO / "operator" / "Dockerfile"}
LOCKS = REPO / "requirements"
EXTRA_LOCKS = {"cpu": "detector", "cuda": "detector", "operator": "operator"}
"""The pyproject extra each image installs, and so the lock it installs it from."""
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
SHA256 = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")
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


def commands(stage: Stage) -> list[list[str]]:
    """The shell commands of a stage's RUN instructions, each split into words."""
    found: list[list[str]] = []
    for run in stage.all("RUN"):
        lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|"):
                if words:
                    found.append(words)
                words = []
            else:
                words.append(token)
    return found


def pip_commands(stage: Stage) -> list[list[str]]:
    """``pip install ...`` / ``pip uninstall ...`` commands, from ``install`` on."""
    found = []
    for words in commands(stage):
        for i, word in enumerate(words):
            if word.rsplit("/", 1)[-1] in ("pip", "pip3") and i + 1 < len(words):
                rest = words[i + 1 :]  # /opt/x/bin/pip install ..., python -m pip install ...
                if rest[0] in ("install", "uninstall"):
                    found.append(rest)
                break
    return found


def lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """A lock file: canonical name -> (pinned version, its --hash options)."""
    text = (LOCKS / name).read_text()
    logical = re.sub(r"\\\n", " ", text)
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        match = PIN.match(requirement)
        assert match, f"{name}: {requirement!r} is not pinned with =="
        pins[canonicalize_name(match[1])] = (match[2], options)
    return pins


def base_images(path: Path) -> list[str]:
    """The images a Dockerfile's stages start from (ARG defaults filled in), other
    stages of the same file left out."""
    preamble, stages = parse(path)
    args = dict(a.partition("=")[::2] for kw, a in preamble if kw == "ARG")
    names = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", path.read_text()))
    images = []
    for stage in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], stage.base)
        if base not in names:
            images.append(base)
    return images


@pytest.fixture(params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> Path:
    path: Path = DOCKERFILES[request.param]
    return path


@pytest.fixture(params=sorted(ALL_DOCKERFILES))
def image(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


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


def test_every_pip_install_is_a_hashed_lock_or_the_project_alone(image: str) -> None:
    """pip refuses a file whose hash differs from the lock's, and any requirement the
    lock does not pin; the project itself comes from the build context, never an index."""
    _, stages = parse(ALL_DOCKERFILES[image])
    installs = [c for stage in stages for c in pip_commands(stage) if c[0] == "install"]
    locks = []
    for words in installs:
        if "--require-hashes" in words:
            requirements = [w for i, w in enumerate(words) if words[i - 1] == "-r"]
            assert requirements, words
            assert all(w.startswith("-") or w in requirements for w in words[1:]), words
            locks += requirements
        else:  # the project: this directory, without dependencies or an index
            assert words[-1] == ".", words
            assert {"--no-deps", "--no-index"} <= set(words), words
    assert f"requirements/{EXTRA_LOCKS[image]}.lock" in locks
    assert "requirements/build.lock" in locks  # setuptools, for the project's build
    for path in locks:
        assert (REPO / path).is_file(), path


@pytest.mark.parametrize(
    "name", ["build.lock", "detector.lock", "detector-cuda.lock", "operator.lock"]
)
def test_lock_files_pin_every_requirement_with_sha256_hashes(name: str) -> None:
    pins = lock(name)
    assert pins
    for package, (_, options) in pins.items():
        hashes = [o for o in options if o.startswith("--hash")]
        assert hashes, f"{name}: {package} has no hash"
        assert all(SHA256.match(h) for h in hashes), (package, hashes)


@pytest.mark.parametrize(
    ("extra", "locked_in"),
    # the detector image also serves the HTTP API (facescan serve, the chart's api)
    [("detector", "detector"), ("api", "detector"), ("operator", "operator")],
)
def test_each_lock_pins_every_requirement_of_its_extra(extra: str, locked_in: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = lock(f"{locked_in}.lock")
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{locked_in}.lock lacks {requirement}"
        assert requirement.specifier.contains(pins[name][0]), (requirement, pins[name][0])


def test_build_lock_pins_the_setuptools_pyproject_builds_with() -> None:
    system = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    pins = lock("build.lock")
    for requirement in map(Requirement, system["requires"]):
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)][0])


def test_no_pip_is_left_in_the_image_that_runs(image: str) -> None:
    """The final stage installs nothing, removes the base image's pip, and copies a
    virtual environment whose pip was uninstalled after its last install."""
    path = ALL_DOCKERFILES[image]
    _, stages = parse(path)
    final = stages[-1]
    assert not [c for c in pip_commands(final) if c[0] == "install"]
    copied = [args.split() for args in final.all("COPY") if args.startswith("--from=")]
    assert [words[1:] for words in copied] == [["/opt/facescan", "/opt/facescan"]]
    venv = pip_commands(stages[-2])  # the build stage, right before the final one
    last_install = max(i for i, c in enumerate(venv) if c[0] == "install")
    removals = [c for c in venv[last_install:] if c[0] == "uninstall"]
    assert any("pip" in c[1:] for c in removals), venv
    base_removes_pip = any(c[0] == "uninstall" and "pip" in c[1:] for c in pip_commands(final))
    python_slim = any(b.startswith("python:") for b in base_images(path))
    assert base_removes_pip or not python_slim  # the CUDA base has no pip installed
    checks = " ".join(final.all("RUN"))
    assert "find_spec('pip')" in checks  # the build fails if pip is still importable


def test_base_images_are_named_by_tag_or_digest_never_latest(image: str) -> None:
    """Pinned by a tag (a digest where the builder has read it from the registry: see
    the Dockerfile's head); never an implicit or explicit ``latest``."""
    for base in base_images(ALL_DOCKERFILES[image]):
        name, _, digest = base.partition("@")
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), base
        else:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", name), base
            assert not name.endswith(":latest"), base


def test_every_package_setuptools_builds_is_copied(image: str) -> None:
    """setuptools refuses to build the project when a package directory pyproject.toml
    names is missing from the build stage."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    _, stages = parse(ALL_DOCKERFILES[image])
    build = stages[-2]
    sources = [
        w.rstrip("/")
        for args in build.all("COPY")
        for w in args.split()[:-1]
        if not w.startswith("--")
    ]
    for directory in setup["package-dir"].values():
        assert any(directory == s or directory.startswith(s + "/") for s in sources), directory


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
    pips = [c for stage in stages for c in pip_commands(stage)]
    uninstall = pips.index(["uninstall", "-y", "onnxruntime"])
    gpu = next(i for i, c in enumerate(pips) if "requirements/detector-cuda.lock" in c)
    cpu = next(i for i, c in enumerate(pips) if "requirements/detector.lock" in c)
    assert cpu < uninstall < gpu  # both at once leave a broken mix of files
    pins, cpu_pins = lock("detector-cuda.lock"), lock("detector.lock")
    assert "onnxruntime-gpu" in pins
    assert "onnxruntime" not in pins
    shared = set(pins) & set(cpu_pins)  # installed already: the same versions, not others
    assert {n: pins[n][0] for n in shared} == {n: cpu_pins[n][0] for n in shared}


def test_dockerignore_keeps_out_the_virtualenv_git_and_caches() -> None:
    patterns = dockerignore()
    for path in (".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "bench/out"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "sql", "operator", "detector_image"):
        assert not ignored(path, patterns), path
