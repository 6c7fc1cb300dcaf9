"""Files and directories written whole or not at all.

Everything statex writes goes first to a hidden temporary beside its target, named
``.NAME.statex-tmp-PID-XXXXXXXX``, and is then renamed into place: a reader never sees half a file, and a crash
leaves the old target (or none) plus at most that temporary, which the next statex run that writes into the same
directory removes once its process is gone (``clean_stale_temporaries``). Temporary directories are created with
``os.mkdir`` (not ``tempfile.mkdtemp``, which forces mode 0700), so outputs get the user's umask.

A directory that replaces an existing one (``--force``) is swapped in atomically: the new directory is complete
before the old one goes (``replace_directory``).
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import socket
from pathlib import Path

from statex.errors import StatexError

TEMP_MARK = ".statex-tmp-"
# temporaries name their process and host, so that on a filesystem shared by several hosts a run never removes
# another host's temporary (whose process it cannot see)
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _temporary_name(name: str) -> str:
    return f".{name}{TEMP_MARK}{os.getpid()}-{_HOST}-{secrets.token_hex(4)}"


def temporary_sibling(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` for a file that will be renamed onto it."""
    path = Path(path)
    return path.parent / _temporary_name(path.name)


def temporary_directory(target: str | Path) -> Path:
    """Create and return an empty hidden directory beside ``target`` (its parent must exist)."""
    target = Path(target)
    while True:
        candidate = target.parent / _temporary_name(target.name)
        try:
            os.mkdir(candidate, 0o777)  # the umask applies
            return candidate
        except FileExistsError:
            continue


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path) -> None:
    """Give a file the mode an ordinary ``open`` would have given it (some writers, e.g. safetensors, create
    their files 0600 whatever the umask)."""
    os.chmod(path, 0o666 & ~current_umask())


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; the parent directory must exist."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree we wrote (a temporary, an old output being replaced)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_directory(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target``, replacing whatever ``target`` was.

    Where the system allows it the two are exchanged in one atomic step; elsewhere the old target is first
    renamed to a hidden temporary and the new one renamed into place (a crash between the two leaves the old
    output whole under that hidden name). The old output is deleted only after the new one is in place."""
    new, target = Path(new), Path(target)
    if not target.exists() and not target.is_symlink():
        os.replace(new, target)
        return
    if _exchange(new, target):
        remove_path(new)  # now holds the old output
        return
    old = temporary_sibling(target)
    os.replace(target, old)
    os.replace(new, target)
    remove_path(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporaries that statex processes which no longer run left in ``directory``. Returns them."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or TEMP_MARK not in name:
            continue
        owner, host = (name.rsplit(TEMP_MARK, 1)[1].split("-") + ["", ""])[:2]
        if host == _HOST and owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
            remove_path(entry)
            removed.append(entry)
    return removed


def read_limited(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a file that must be small (a config, an index); refused with one line when larger."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise StatexError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise StatexError(f"{path}: the {what} is larger than {limit // 2**20} MiB; refusing to read it")
    return data


def probe_writable(directory: str | Path) -> None:
    """Refuse, before any long work, a target directory that cannot be written: the nearest existing
    ancestor must be a directory in which a file can actually be created (permissions, read-only mounts)."""
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise StatexError(f"{directory}: {existing} is not a directory")
    probe = existing / _temporary_name("probe")
    try:
        probe.open("xb").close()
    except OSError as exc:
        raise StatexError(f"{existing}: cannot write here ({exc.strerror or exc})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def safe_file_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
