"""Atomic file and directory writes: nothing masc-hf saves is ever seen half-written.

Every temporary is created exclusively under an unpredictable name beside its target
(``.<target>.<8 random characters>.tmp``, ``mkstemp``/``mkdtemp``), so no planted symlink is
followed; the writer holds an advisory lock on it while writing, so that the next write of the same
target can tell what a killed run left behind (unlocked) from another process's work (locked).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, so leftovers are not cleaned
    fcntl = None

# ``tempfile``'s names: the prefix and suffix given here around 8 characters of its alphabet
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def replace_dir(staging: Path, target: Path) -> None:
    """Move the finished directory ``staging`` to ``target``. An existing ``target`` is moved aside
    first and deleted only once the new one is in place (restored if the move fails)."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old / "previous", target)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give a finished staging directory (one made beside ``target`` under this module's name
    pattern, e.g. by several processes writing one checkpoint) the usual permissions, then move it
    onto ``target`` (see :func:`replace_dir`)."""
    _usual_permissions(Path(staging))
    replace_dir(Path(staging), Path(target))


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; when the block ends normally it and all
    it holds get the usual permissions (directories ``0o777`` and files ``0o666`` less the umask,
    not the ``0o700``/``0o600`` of ``mkdtemp`` and of some writers, safetensors' among them) and it
    replaces ``target`` (see :func:`replace_dir`); when it raises it is deleted and ``target`` is untouched.
    Staging directories of ``target`` left by a killed run are deleted first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    fd, staging = _locked_temp(target, directory=True)
    try:
        yield staging
        _usual_permissions(staging)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a new, empty file's path beside ``path`` (created exclusively under an unpredictable
    name) for a writer that takes a path (safetensors, PIL, parquet, zip). When the block ends
    normally the file gets the usual permissions (``0o666`` less the umask, not ``mkstemp``'s
    ``0o600``), is flushed to disk if ``fsync``, and is renamed over ``path``; when it raises, the
    temporary file is deleted and ``path`` is untouched. Temporary files of ``path`` left by a
    killed run are deleted first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    fd, tmp = _locked_temp(path, directory=False)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a file open on a temporary name beside ``path``, renamed over ``path`` when the block
    ends normally (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
        yield handle


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_file(path, "w") as handle:
        handle.write(text)
    return Path(path)


def check_writable(path: str | os.PathLike, what: str, error: type[Exception]) -> None:
    """Raise ``error`` unless files can be created at ``path`` (a directory to fill or create): in it,
    or, if it does not exist yet, in its nearest existing ancestor. Probed by creating a temporary
    file, since a read-only file system refuses even root, whom permission bits never stop."""
    ancestor = Path(path)
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise error(f"{what} cannot be created: {str(ancestor)!r} is a file; pass a directory path")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise error(f"{what} cannot be written: nothing can be created in {str(ancestor)!r} ({err.strerror or err}); choose a writable location") from None


def _file_or_foreign(target: Path, own: set[str] | frozenset[str]) -> tuple[bool, list[str]]:
    """``(target is a non-directory, the entries of the directory target that are not own)``."""
    if not target.exists():
        return False, []
    if not target.is_dir():
        return True, []
    return False, foreign_entries(target, own)


def foreign_entries(directory: str | os.PathLike, own: set[str] | frozenset[str]) -> list[str]:
    """Sorted names in ``directory`` that are not in ``own`` (a writer's own output names): what
    replacing the directory would delete that the writer did not make."""
    return sorted(entry.name for entry in Path(directory).iterdir() if entry.name not in own)


def refuse_foreign_files(target: str | os.PathLike, own: set[str] | frozenset[str], what: str, error: type[Exception]) -> None:
    """Raise ``error`` if ``target`` exists as a file, or as a directory holding entries other than
    ``own`` (a save replaces the whole directory: it must not delete anyone else's files)."""
    target = Path(target)
    is_file, foreign = _file_or_foreign(target, own)
    if is_file:
        raise error(f"{target} exists and is not a directory; choose a directory path")
    if foreign:
        raise error(f"{target} holds files that are not part of {what} ({', '.join(foreign[:5])}); save into an empty or new directory")


def check_output_dir(target: str | os.PathLike, own: set[str] | frozenset[str], *, overwrite: bool, error: type[Exception]) -> None:
    """Raise ``error`` unless ``target`` may be written (replaced) by a writer whose output is the
    names ``own``: it is new or empty, or ``overwrite`` is set and it holds nothing but ``own``
    names (what a previous run wrote), so that replacing it deletes nothing else."""
    target = Path(target)
    is_file, foreign = _file_or_foreign(target, own)
    if is_file:
        raise error(f"output {target} exists and is not a directory; choose another --out")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise error(
            f"output directory {target} holds files this tool did not write ({shown}); overwrite=True (--overwrite) "
            "replaces only a previous run's output, never other files: choose another --out, or move those files"
        )
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise error(f"output directory {target} already exists and is not empty; pass overwrite=True (--overwrite) or another --out")


# ---------------------------------------------------------------------------- leftovers of killed runs
# directory -> {target name: temporary names}, listed once per process: a directory of 50k images
# written one file at a time is not listed 50k times
_listed: dict[str, dict[str, list[str]]] = {}


def clean_leftovers(target: str | os.PathLike) -> None:
    """Delete the temporaries of ``target`` that a killed run left beside it: entries named as this
    module names them (``.<target name>.<8 characters>.tmp``), owned by this user, regular files
    or directories (never a symlink's target), and not locked by a live writer."""
    if fcntl is None:  # pragma: no cover
        return
    target = Path(target)
    key = os.path.abspath(target.parent)
    listing = _listed.get(key)
    if listing is None:
        listing = {}
        try:
            names = os.listdir(key)
        except OSError:
            return
        for name in names:
            match = _TEMP_NAME.match(name)
            if match:
                listing.setdefault(match["target"], []).append(name)
        _listed[key] = listing
    for name in listing.pop(target.name, []):
        _remove_if_orphaned(Path(key) / name)


def _remove_if_orphaned(path: Path) -> None:
    try:  # O_NOFOLLOW: a planted symlink is never opened; O_NONBLOCK: nor does a FIFO hang us
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _locked_temp(target: Path, *, directory: bool) -> tuple[int, Path]:
    """A new temporary beside ``target`` and an open descriptor holding its lock (the caller closes it)."""
    while True:
        if directory:
            name = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except FileNotFoundError:  # removed by a cleaner in the instant before we locked it
                continue
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        if fcntl is None:  # pragma: no cover
            return fd, Path(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: cleaners cannot lock it either, so it is safe
            return fd, Path(name)
        try:  # still ours? a cleaner may have taken the lock first and deleted it
            same = os.path.samestat(os.lstat(name), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            return fd, Path(name)
        os.close(fd)


def _usual_permissions(root: Path) -> None:
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):  # chmod would follow it
                os.chmod(path, (0o777 if name in dirs else 0o666) & ~mask)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would change it for every thread meanwhile)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask
