"""Opening a file beneath a directory, with no way out of it and no window for a race.

Called by image loading (``loading.open_in_library``) for every library file. The path
is resolved by the kernel relative to a descriptor of the root, in the same call that
opens the file, so that a directory swapped for a symlink (or a symlink retargeted)
between a check and the open cannot lead outside: there is no separate check.

Where the kernel has ``openat2`` (Linux 5.6) it does the whole resolution with
``RESOLVE_BENEATH``; elsewhere (an older kernel, a seccomp profile that refuses the
call) the path is walked one component at a time from the root's descriptor, each one
opened with ``O_NOFOLLOW`` relative to its parent's descriptor. Either way symlinks
are followed while they stay beneath the root; a relative link's ``..`` is resolved
lexically along the walk, and an absolute link, like a ``..`` above the root, is an
escape: ``OSError(EXDEV)``. Other failures are the kernel's own ``OSError``.

The walk's limit: a directory moved out of the root by someone with write access
outside it, while the walk holds its descriptor, is followed there; ``openat2``
detects that and refuses.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import stat

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437
"""openat2's number in the syscall table every 64-bit architecture below shares."""
_OPENAT2_MACHINES = frozenset({"x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"})
_MAX_LINKS = 40
"""Symlinks followed in one resolution before ELOOP, as the kernel does."""
_RETRIES = 8
"""openat2 answers EAGAIN when a rename raced the resolution; it is tried again."""
O_PATH = getattr(os, "O_PATH", os.O_RDONLY)


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def open_beneath(root_fd: int, relative_path: str, flags: int) -> int:
    """A descriptor of ``relative_path`` opened with ``flags`` beneath ``root_fd``.

    Raises ``OSError(EXDEV)`` for a path or a symlink leading out of the root, and the
    kernel's OSError for everything else (ENOENT, EACCES, ELOOP, ...)."""
    if os.path.isabs(relative_path):
        raise _escape(relative_path)
    if _openat2_works():
        return _openat2(root_fd, relative_path, flags)
    return walk_beneath(root_fd, relative_path, flags)


@functools.cache
def _openat2_works() -> bool:
    """Whether this kernel (and its seccomp profile) serves openat2: probed once."""
    if platform.system() != "Linux" or platform.machine() not in _OPENAT2_MACHINES:
        return False
    top = os.open("/", O_PATH | os.O_CLOEXEC)
    try:
        os.close(_openat2(top, ".", O_PATH))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return False
        raise
    finally:
        os.close(top)
    return True


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    libc = _libc()
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    encoded = os.fsencode(path)
    error = errno.EAGAIN
    for _ in range(_RETRIES):
        fd = libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(encoded),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        error = ctypes.get_errno()
        if error not in (errno.EAGAIN, errno.EINTR):
            break
    if error == errno.EXDEV:
        raise _escape(path)
    raise OSError(error, os.strerror(error), path)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def walk_beneath(root_fd: int, relative_path: str, flags: int) -> int:
    """``open_beneath`` without openat2: one component at a time, never following a
    link the kernel would resolve on its own."""
    if os.path.isabs(relative_path):
        raise _escape(relative_path)
    pending = _components(relative_path)
    parents: list[int] = []  # descriptors below the root, deepest last
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            here = parents[-1] if parents else root_fd
            if name == "..":
                if not parents:
                    raise _escape(relative_path)
                os.close(parents.pop())
                continue
            last = not pending
            opening = flags | os.O_NOFOLLOW | os.O_CLOEXEC
            if not last:
                opening = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(name, opening, dir_fd=here)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target = _link_target(name, here)
                if target is None:
                    raise
            else:
                if last:
                    return fd
                if not stat.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH may open the link
                    parents.append(fd)
                    continue
                os.close(fd)
                target = _link_target(name, here)
            links += 1  # a link followed, or a name looked at again after a swap
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative_path)
            if target is None:  # no longer a link (swapped meanwhile): look again
                pending.insert(0, name)
            elif os.path.isabs(target):
                raise _escape(relative_path)
            else:
                pending[:0] = _components(target)
        return os.dup(parents[-1] if parents else root_fd)  # "" or "." : the root itself
    finally:
        for fd in parents:
            os.close(fd)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _link_target(name: str, dir_fd: int) -> str | None:
    """The symlink's target, or None where ``name`` is not (or no longer) a symlink."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise


def _escape(path: str) -> OSError:
    return OSError(errno.EXDEV, "resolves outside the library root", path)
