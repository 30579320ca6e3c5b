"""Writing files so that a crash, a kill or a full disk never leaves half a file in place.

- `atomic_file(path)`: write to a temporary file beside `path`, fsync it, rename(2) it onto
  `path`, fsync the directory. A reader sees the old file or the new one, never a mix; on any
  failure the temporary file is removed and the old file is untouched.
- `atomic_dir(out)`: the same for a directory of files (an export bundle): it is built in
  `.NAME.PID.XXXX.partial` beside `out` and renamed into place when complete. Partial
  directories left by killed processes are removed by the next export to the same place
  (`clean_stale_partials`).
- `write_error(path, e)`: an OSError as one line naming the path (ENOSPC, EROFS, EACCES,
  ENAMETOOLONG...), a `WriteError`, which the CLI prints and exits 2 on.

A leaf module: it imports nothing from nas but nas.errors.
"""

import errno
import glob
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from nas.errors import UsageError

PARTIAL_SUFFIX = ".partial"

_WHY = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a parent is not a directory",
    errno.EISDIR: "is a directory",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
    errno.ELOOP: "too many levels of symbolic links",
}


class WriteError(UsageError):
    """A file could not be written (or read) for a reason of the system: one line naming the path."""


def write_error(path, e: OSError, action: str = "cannot write") -> WriteError:
    why = _WHY.get(e.errno, e.strerror or type(e).__name__)
    return WriteError(f"{action} {str(path)!r}: {why} (errno {e.errno and errno.errorcode.get(e.errno, e.errno)})")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path):
    """Yields a temporary Path beside `path`; write it; on success it replaces `path` atomically."""
    path = Path(path)
    _check_not_special(path, "cannot write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file is meant to be shared
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def clean_stale_partials(parent: Path, name: str) -> list[Path]:
    """Tidy what killed writers of `parent/name` left: remove `.NAME.PID.*.partial`
    directories whose process is gone; a `.NAME.old-PID` (the complete directory a killed
    replacement had moved aside, between its two renames) goes back to `NAME` when `NAME` is
    missing, else it is removed. Returns the paths removed or restored."""
    removed = []
    target = Path(parent) / name
    name = _stem(name)
    try:
        entries = list(Path(parent).glob(f".{glob.escape(name)}.*{PARTIAL_SUFFIX}"))
        olds = list(Path(parent).glob(f".{glob.escape(name)}.old-*"))
    except OSError:
        return removed
    for d in entries:
        pid = d.name[len(name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):  # not a digit: another output's (`NAME.x`)
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    for d in olds:
        pid = d.name[len(name) + len(".old-") + 1:]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if not target.exists():
                d.rename(target)  # the killed run never put its replacement in place
            else:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue
        removed.append(d)
    return removed


def _stem(name: str) -> str:
    """The part of an output's name its temporary names carry: at most 200 characters, so that
    `.NAME.PID.XXXXXXXX.partial` stays within a 255-byte name limit."""
    return name[:200]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_dir(out, replace_nonempty: bool = True):
    """Yields a temporary directory beside `out`; fill it; on success it is renamed onto `out`
    (an absent or empty `out` is replaced atomically; a non-empty one is moved aside first and
    then removed). On any failure the temporary directory is removed."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(out.parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_stem(out.name)}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=out.parent))
    except OSError as e:
        raise write_error(out, e) from None
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if out.exists() and any(out.iterdir()):
            if not replace_nonempty:
                raise UsageError(f"-o {str(out)!r}: not empty; expected an empty or new directory")
            old = out.with_name(f".{_stem(out.name)}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(out, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_path(path, what: str = "-o") -> Path:
    """Refuse, before any work, an output path that is a symbolic link (dangling or not: a write
    through it lands elsewhere) or whose folder cannot take a new file (read-only, `/proc`): a
    probe file is created in the nearest existing folder above it and removed at once."""
    p = Path(path)
    if p.is_symlink():
        raise UsageError(f"{what} {str(path)!r}: is a symbolic link (to {os.readlink(p)!r}); "
                         f"expected a plain path (links are not followed)")
    _check_not_special(p, what)
    _check_name_lengths(p, what)
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:  # missing folders are created later
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} {str(path)!r}: {str(parent)!r} is not a folder; expected a path in a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".nas-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise write_error(path, e, f"{what}: cannot write") from None
    return p


def _check_not_special(p: Path, what: str) -> None:
    """A device, FIFO or socket at the output path: writing would replace it (rename(2) over
    /dev/full as root) or block. Refused; a regular file or a directory goes on."""
    try:
        mode = os.lstat(p).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise UsageError(f"{what} {str(p)!r}: is a device, FIFO or socket; expected a regular file or a new path")


def _check_name_lengths(p: Path, what: str) -> None:
    """Every part of the path within the file system's name limit (NAME_MAX, 255 bytes on most),
    with room for the temporary names `atomic_file` / `atomic_dir` build beside it."""
    anchor = p.absolute().parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in p.parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise WriteError(f"{what} {_short(str(p))!r}: a name of {n} bytes ({_short(part, 24)!r}); "
                             f"expected at most {name_max} bytes per name (errno ENAMETOOLONG)")
    total = len(os.fsencode(str(p.absolute())))
    if total >= 4096:
        raise WriteError(f"{what} {_short(str(p))!r}: a path of {total} bytes; expected under 4096 (errno ENAMETOOLONG)")


def _short(text: str, keep: int = 80) -> str:
    return text if len(text) <= keep else text[:keep // 2] + "..." + text[-keep // 2:]


def require_free_space(directory, needed_bytes: int, what: str) -> None:
    """Refuse before writing when the file system holding `directory` has less than
    `needed_bytes` free. Needed because some writers (torch.jit.save) abort the interpreter on
    ENOSPC instead of raising, so the failure must be caught before them."""
    d = Path(directory)
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        st = os.statvfs(d)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < needed_bytes:
        raise WriteError(f"{what} {str(directory)!r}: {free} bytes free on its file system, "
                         f"about {needed_bytes} needed; free some space or choose another place")
