"""The last step before a pod's container runs, in the process that becomes it.

Started by the node agent as ``unshare --mount --propagation private python -m
facescan_devcluster.podexec SPEC.json``: it joins the pod's memory cgroup, builds the
container's view of the filesystem in its private mount namespace (a tmpfs root holding
bind mounts of the host's top-level folders, then each volume bound at its mountPath,
read-only where asked; nothing is seen outside this process tree), chroots into it,
takes the container's uid, gid and supplementary groups, and execs the command. What a
container runtime does with an image, minus the image: the program comes from the host.
Any failure exits 128 with a one-line message on stderr (the agent reports StartError).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HOST_ENTRIES_SKIPPED = {"lost+found"}
"""Top-level host entries not bound into a container's root."""
OWN = {"tmp": 0o1777, "run": 0o755}
"""Top-level folders a container has of its own, empty (an image's), not the host's."""


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _make_root(root: Path, mounts: list[dict[str, Any]], image: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(root))
    for entry in sorted(Path("/").iterdir()):
        if entry.name in HOST_ENTRIES_SKIPPED or entry == root:
            continue
        target = root / entry.name
        if entry.is_symlink():
            target.symlink_to(os.readlink(entry))
        elif entry.name in OWN:
            target.mkdir()
            target.chmod(OWN[entry.name])
        elif entry.is_dir() and not entry.stat().st_mode & 0o001:
            target.mkdir(mode=0o755)  # private on the host (/root): only the image's paths
        elif entry.is_dir():
            target.mkdir()
            # recursive (with the mounts beneath), except the folder that holds this root
            recursive = not root.is_relative_to(entry)
            _mount("--rbind" if recursive else "--bind", str(entry), str(target))
        elif entry.is_file():
            target.touch()
            _mount("--bind", str(entry), str(target))
    targets = []
    for mount in mounts:
        target = _inside(root, mount["target"])
        targets.append(target)
        source = Path(mount["source"])
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        _mount("--bind", str(source), str(target))
        if mount.get("readOnly"):
            _mount("-o", "remount,bind,ro", str(target))
    # the "image" (the project's environment, readable by all), last: where a folder of
    # the host is not shown or a volume covers it (a checkout under /tmp, an emptyDir there)
    for path in map(Path, image):
        top = Path("/", path.parts[1])
        target = root / path.relative_to("/")
        hidden = top.name in OWN or (top.is_dir() and not top.stat().st_mode & 0o001)
        if hidden or any(target.is_relative_to(t) for t in targets):
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            _mount("--rbind", "-o", "ro", str(path), str(target))


def _inside(root: Path, path: str) -> Path:
    """Where ``path`` of the container is under ``root``: symbolic links followed as the
    container sees them (/var/run -> /run is root's /run, not the host's)."""
    parts = [p for p in Path(path).parts if p != "/"]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = current / part
        if candidate.is_symlink() and hops < 40:
            hops += 1
            link = os.readlink(candidate)
            base = root if link.startswith("/") else current
            parts = [p for p in Path(link).parts if p != "/"] + parts
            current = base
            continue
        current = candidate
    return current


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    # opened now, written through after the chroot and the uid change; closed by exec
    errors = os.open(spec["errorFile"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if spec.get("cgroupProcs"):
            Path(spec["cgroupProcs"]).write_text(str(os.getpid()))
        if spec.get("root"):
            _make_root(Path(spec["root"]), spec.get("mounts") or [], spec.get("image") or [])
            os.chroot(spec["root"])
        elif any(m["source"] != m["target"] for m in spec.get("mounts") or ()):
            raise OSError("volumes at their mountPaths need a node agent run as root")
        os.chdir(spec.get("workingDir") or "/")
        gid, uid = spec.get("gid"), spec.get("uid")
        if gid is not None or spec.get("groups"):
            os.setgroups([int(g) for g in spec.get("groups") or []])
        if gid is not None:
            os.setgid(int(gid))
        if uid is not None:
            os.setuid(int(uid))
        command = spec["argv"]
        os.execvpe(command[0], command, spec["env"])
    except (OSError, subprocess.CalledProcessError, KeyError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        message = f"cannot start the container: {detail}"
        print(f"podexec: {message}", file=sys.stderr)
        os.write(errors, f"{message}\n".encode())
        sys.exit(128)


if __name__ == "__main__":
    main(sys.argv)
