"""No credential in any output: every `facescan` command that takes a database URL, and
the detector, run as a user runs them (subprocesses), given malformed URLs whose password
a careless parser would print, and well-formed ones it must not print either.

A malformed URL is a usage error (exit 2) that says what is wrong and quotes none of the
URL; a well-formed one that cannot be reached is a database error (exit 3; the detector's
75) naming host, port and database only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import typer.main

from facescan_devcluster.controlplane import free_port
from facescan_operator.cli import app
from tests.e2e.local.support import FACESCAN, copy_samples

DETECTOR = [sys.executable, "-m", "facescan_detector.cli", "run"]
SECRETS = ("hunter2Q", "zebra9K")
"""The two halves of every password below: neither may appear in any output."""


PORT = free_port()  # nothing listens there
MALFORMED = {
    "slash in password": f"postgresql://alice:hunter2Q/zebra9K@127.0.0.1:{PORT}/photos",
    "question mark in password": f"postgresql://alice:hunter2Q?zebra9K@127.0.0.1:{PORT}/photos",
    "hash in password": f"postgresql://alice:hunter2Q#zebra9K@127.0.0.1:{PORT}/photos",
    "at sign in password": f"postgresql://alice:hunter2Q@zebra9K@127.0.0.1:{PORT}/photos",
    "colon and at sign": f"postgresql://alice:hunter2Q@zebra9K:1x@127.0.0.1:{PORT}/photos",
    "bare word": "hunter2Qzebra9K",
    "password as port": "postgresql://alice:hunter2Qzebra9K/photos",
    "ampersand in query password": (
        f"postgresql://alice@127.0.0.1:{PORT}/photos?password=hunter2Q&zebra9K"
    ),
    "ampersand and equals in query password": (
        f"postgresql://alice@127.0.0.1:{PORT}/photos?password=hunter2Q&zebra9K=1"
    ),
    "unclosed bracket": "postgresql://alice:hunter2Q@[zebra9K/photos",
}
UNREACHABLE = {
    "encoded password": f"postgresql://alice:hunter2Q%2F%40zebra9K@127.0.0.1:{PORT}/photos",
    "query password": f"postgresql://alice@127.0.0.1:{PORT}/photos?password=hunter2Qzebra9K",
}


def _dsn_commands() -> dict[str, list[str]]:
    """Every `facescan` command with a --dsn option, by its words (`db migrate`)."""

    def walk(command: Any, words: list[str]) -> Iterator[tuple[list[str], Any]]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*words, name])
        else:
            yield words, command

    return {
        " ".join(words): words
        for words, command in walk(typer.main.get_command(app), [])
        if any("--dsn" in param.opts for param in command.params)
    }


COMMANDS = _dsn_commands()


def _arguments(words: list[str], library: Path) -> list[str]:
    """The command's required arguments and options, each given the library directory
    (or 1 where a number is wanted: a face id)."""
    command: Any = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    args: list[str] = []
    for param in command.params:
        if param.required:
            value = "1" if getattr(param, "metavar", None) == "FACE_ID" else str(library)
            is_option = param.opts[0].startswith("-")
            args += [param.opts[0], value] if is_option else [value]
    return args


@pytest.fixture
def library(tmp_path: Path) -> Path:
    copy_samples(tmp_path / "photos", ["obama.jpg"])
    return tmp_path / "photos"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESCAN_", "PG"))}
    return {**env, **extra}


def _facescan(
    words: list[str], library: Path, *, dsn: str | None = None, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    given = ["--dsn", dsn] if dsn is not None else []
    return subprocess.run(
        [str(FACESCAN), *words, *_arguments(words, library), *given],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def _assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in result.stdout, result.stdout
        assert secret not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_every_command_with_a_database_url_is_covered() -> None:
    assert {"scan", "register", "status", "db migrate"} <= COMMANDS.keys()


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_url_is_a_usage_error_that_quotes_none_of_it(case: str, library: Path) -> None:
    result = _facescan(["status"], library, dsn=MALFORMED[case], env=_clean_env())
    _assert_no_secret(result)
    assert result.returncode == 2, result.stderr
    assert "the database URL is malformed" in result.stderr
    assert "postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in result.stderr


def test_not_a_url_is_a_usage_error_not_an_unreachable_database(library: Path) -> None:
    result = _facescan(["status"], library, dsn="notaurl", env=_clean_env())
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "facescan: the database URL is malformed: it does not start with postgresql:// or "
        "postgres://. Expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE\n"
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", ["slash in password", "bare word"])
def test_every_command_refuses_a_malformed_url_without_printing_it(
    command: str, case: str, library: Path
) -> None:
    # from the environment, as the README advises, for each command
    env = _clean_env(FACESCAN_DSN=MALFORMED[case])
    result = _facescan(COMMANDS[command], library, env=env)
    _assert_no_secret(result)
    assert result.returncode == 2, result.stderr
    assert "the database URL is malformed" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_names_only_host_port_and_database_when_unreachable(
    command: str, library: Path
) -> None:
    # the two forms of a password in a URL, taken in turn
    dsn = list(UNREACHABLE.values())[list(COMMANDS).index(command) % len(UNREACHABLE)]
    result = _facescan(COMMANDS[command], library, dsn=dsn, env=_clean_env())
    _assert_no_secret(result)
    assert result.returncode == 3, result.stderr
    assert f"127.0.0.1:{PORT}/photos" in result.stderr


def test_the_url_may_come_from_a_file(tmp_path: Path, library: Path, empty_dsn: str) -> None:
    url = tmp_path / "database.dsn"
    url.write_text(empty_dsn.replace("postgres:@", "postgres:hunter2Q%2Fzebra9K@") + "\n")
    url.chmod(0o600)
    env = _clean_env(FACESCAN_DSN_FILE=str(url))
    migrated = _facescan(["db", "migrate"], library, env=env)
    assert migrated.returncode == 0, migrated.stderr
    status = _facescan(["status"], library, env=env)
    assert status.returncode == 0, status.stderr
    _assert_no_secret(migrated)
    _assert_no_secret(status)

    url.write_text(MALFORMED["slash in password"])
    malformed = _facescan(["status"], library, env=env)
    _assert_no_secret(malformed)
    assert malformed.returncode == 2
    missing = _facescan(["status"], library, env=_clean_env(FACESCAN_DSN_FILE=f"{url}.gone"))
    assert missing.returncode == 2
    assert f"cannot read the database URL file {url}.gone" in missing.stderr


def test_a_password_reaches_no_output_and_no_command_line_of_a_scan(
    library: Path, empty_dsn: str
) -> None:
    dsn = empty_dsn.replace("postgres:@", "postgres:hunter2Q%2Fzebra9K@")
    assert dsn != empty_dsn
    scan = subprocess.Popen(
        [str(FACESCAN), "scan", str(library)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(FACESCAN_DSN=dsn),
    )
    seen: list[str] = []
    while scan.poll() is None:  # what `ps` shows of the scan and its workers
        for process in [psutil.Process(scan.pid), *psutil.Process(scan.pid).children(True)]:
            try:
                seen.append(" ".join(process.cmdline()))
            except psutil.Error:
                continue
        time.sleep(0.05)
    stdout, stderr = scan.communicate(timeout=120)
    assert scan.returncode == 0, stderr
    assert any("facescan-detector" in line for line in seen), "no worker was seen"
    for secret in SECRETS:
        assert not [line for line in seen if secret in line]
        assert secret not in stdout + stderr


@pytest.mark.parametrize("case", MALFORMED)
def test_the_detector_refuses_a_malformed_url_without_printing_it(
    case: str, tmp_path: Path
) -> None:
    env = _clean_env(
        FACESCAN_DSN=MALFORMED[case],
        FACESCAN_LEASE_OWNER="test-owner",
        FACESCAN_LIBRARY_ROOT=str(tmp_path),
        FACESCAN_DATABASE_RETRY_S="0",
    )
    result = subprocess.run(
        [*DETECTOR, "-v"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    _assert_no_secret(result)
    assert result.returncode == 2, result.stderr  # cannot start; no retry mends it
    assert "the database URL is malformed" in result.stderr


@pytest.mark.parametrize("case", UNREACHABLE)
def test_the_detector_names_only_host_port_and_database_when_unreachable(
    case: str, tmp_path: Path
) -> None:
    env = _clean_env(
        FACESCAN_DSN=UNREACHABLE[case],
        FACESCAN_LEASE_OWNER="test-owner",
        FACESCAN_LIBRARY_ROOT=str(tmp_path),
        FACESCAN_DATABASE_RETRY_S="1",  # one retry, logged
    )
    result = subprocess.run(
        [*DETECTOR, "-v"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    _assert_no_secret(result)
    assert result.returncode == 75, result.stderr
    assert f"127.0.0.1:{PORT}/photos" in result.stderr
