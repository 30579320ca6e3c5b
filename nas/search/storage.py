"""Where studies live.

Default: an Optuna journal file ``studies/<study>.journal`` — append-only with file locks,
safe for several local worker processes (no "database is locked"), readable by
optuna-dashboard. Any Optuna RDB URL (``postgresql://...``, ``sqlite:///...``) is used as
given; RDB storages get heartbeats, so a dead worker's RUNNING trial is marked FAIL and its
architecture re-enqueued (`RetryHeartbeatStaleTrialCallback`).

Journal files have no heartbeat; instead every trial records its worker (host, pid), and
`fail_dead_local_trials` marks RUNNING trials of dead local processes FAIL and re-enqueues
their parameters. It runs when a worker starts.

Journal files are opened through `RecoveringJournalBackend` (why: see its docstring): a torn
last record is moved to a `.corrupt` sidecar, appends never leave a torn record behind, and a
corrupt record in the middle is refused with its byte offset.
"""

import datetime
import inspect
import json
import os
import socket
import stat
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.storages.journal._file import get_lock_file
from optuna.trial import TrialState

from nas.errors import UsageError
from nas.search.records import TrialRecord, trial_attrs

# Heartbeats, RetryHeartbeatStaleTrialCallback and metric names are marked experimental in
# Optuna; they are what we rely on deliberately, so their warnings are noise to a user.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDIES_DIR = Path("studies")
HEARTBEAT_S = 15
GRACE_S = 60


def default_url(study: str) -> str:
    return f"journal:{STUDIES_DIR / (study + '.journal')}"


def _existing_file(url: str) -> Path | None:
    """The local file a journal / SQLite URL names (None for server URLs)."""
    if url.startswith("journal:") or url.endswith(".journal"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    return None


def open_study(name: str, storage_url: str | None) -> tuple[optuna.Study, object, str]:
    """(study, its storage, storage url). UsageError when the storage or the study does not exist."""
    url = storage_url or default_url(name)
    where = "--storage" if storage_url else f"--study {name!r}"
    path = _existing_file(url)
    if path is not None and not path.is_file():
        hint = "give --storage" if storage_url is None else "check the path"
        here = "" if path.is_absolute() else f" under the current folder {str(Path.cwd())!r}"
        raise UsageError(f"{where}: no storage file {str(path)!r}{here} (looked for {url!r}); "
                         f"run `nas search --study {name}` first, or {hint}")
    storage = open_storage(url)
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as e:  # a file that is not a journal / database
        raise UsageError(f"{where}: cannot read studies from {url!r} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if name not in names:
        there = ", ".join(repr(n) for n in sorted(names)) or "none"
        raise UsageError(f"--study {name!r}: no such study in {url!r} (studies there: {there})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage), storage, url


class JournalCorrupt(UsageError):
    """A journal record in the middle of the file is not valid JSON: nothing is appended."""


class RecoveringJournalBackend(JournalFileBackend):
    """Optuna's JournalFileBackend, made safe against torn writes.

    Wrapping is needed because Optuna's backend (optuna 4.x) silently skips a last line that
    lacks its newline when reading, but its `append_logs` then writes the next record straight
    onto that torn line; the merged line is invalid JSON in the middle of the file, and from
    then on every read raises `JSONDecodeError`, so every finished trial is unreachable. A
    write that fails half-way (a full disk) leaves exactly such a torn line. Here:

    - on open, a torn last record (bytes after the last newline) is moved to `PATH.corrupt`
      and cut off; complete records are kept; one warning line on stderr names both;
    - `append_logs` starts on a fresh line (a torn tail left by a writer that died since is
      moved aside the same way, under the journal's lock), and a write that fails (ENOSPC,
      EIO...) truncates the file back to where it was, so no torn record remains;
    - a corrupt record followed by good ones (not a torn write, hand-edited or damaged) is
      refused with its byte offset and a command that keeps the records before it.
    """

    def __init__(self, file_path: str) -> None:
        _check_regular_file(file_path)
        super().__init__(file_path, lock_obj=JournalFileOpenLock(file_path))
        try:
            self._lock.acquire()
        except OSError:  # a read-only place (nas report on a mounted copy): check, change nothing
            self._check_and_recover(repair=False)
            return
        try:
            self._check_and_recover(repair=True)
        finally:
            self._lock.release()

    def _check_and_recover(self, repair: bool) -> None:
        path = self._file_path
        with open(path, "rb") as f:
            data = f.read()
        good_end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn record
        offset = 0
        for line in data[:good_end].splitlines(keepends=True):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "op_code" not in record:
                    raise ValueError("not an Optuna journal record")
            except ValueError:
                if offset == 0:
                    raise UsageError(f"--storage {path!r}: not an Optuna journal (its first line is not a "
                                     f"journal record); expected a .journal file written by nas or Optuna, "
                                     f"or a new path") from None
                raise _corrupt_record(path, offset, data[:offset].count(b"\n") + 1) from None
            offset += len(line)
        tail = data[good_end:]
        head = b'{"op_code":'
        if good_end == 0 and tail and not (tail.startswith(head) or head.startswith(tail)):
            raise UsageError(f"--storage {path!r}: not an Optuna journal (it does not start with a journal "
                             f"record); expected a .journal file written by nas or Optuna, or a new path")
        if not tail or not repair:  # Optuna's reader skips a torn last line
            return
        try:  # only the newline was lost: the record itself is whole
            if isinstance(json.loads(tail), dict):
                with open(path, "ab") as f:
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                return
        except ValueError:
            pass
        self._move_torn_tail(good_end, tail)

    def _move_torn_tail(self, good_end: int, tail: bytes) -> None:
        path = self._file_path
        sidecar = path + ".corrupt"
        with open(sidecar, "ab") as f:
            f.write(tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.truncate(path, good_end)
        print(f"nas: warning: journal {path}: torn last record ({len(tail)} bytes at byte {good_end}) "
              f"moved to {sidecar}; the complete records before it are kept",
              file=sys.stderr)

    def append_logs(self, logs: list[dict]) -> None:
        payload = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        with get_lock_file(self._lock):
            fd = os.open(self._file_path, os.O_RDWR | os.O_APPEND)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer died mid-record
                    good_end = size - len(_tail_after_newline(fd, size))
                    self._move_torn_tail(good_end, os.pread(fd, size - good_end, good_end))
                    size = good_end
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError as e:
                    os.ftruncate(fd, size)  # leave no torn record behind
                    raise OSError(e.errno, e.strerror, self._file_path) from None
            finally:
                os.close(fd)


def _corrupt_record(path: str, offset: int, line_number: int, why: str = "") -> JournalCorrupt:
    return JournalCorrupt(
        f"journal {path!r}: corrupt record at byte {offset} (line {line_number}){why} "
        f"(not a torn last write); keep the records before it with "
        f"`cp {path} {path}.bak && truncate -s {offset} {path}`")


class CheckedJournalStorage(JournalStorage):
    """Optuna's JournalStorage whose replay failures name the record.

    A record can be valid JSON and still be damaged inside (a flipped byte in the escaped
    `distribution` string, a missing field): `RecoveringJournalBackend` accepts the line, and
    Optuna's replay raises JSONDecodeError / KeyError / TypeError from deep inside, on every
    open. Such a record is refused like any corrupt middle record: with its byte offset and
    the command that keeps the records before it (issue 18)."""

    def _sync_with_backend(self) -> None:
        try:
            super()._sync_with_backend()
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            index = self._replay_result.log_number_read - 1  # counted before each record is applied
            backend = self._backend
            offset = getattr(backend, "_log_number_offset", {}).get(index)
            path = getattr(backend, "_file_path", "?")
            if offset is None:
                raise UsageError(f"journal {path!r}: record {index + 1} cannot be replayed "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
            why = f" that Optuna cannot replay ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            raise _corrupt_record(path, offset, index + 1, why[:300]) from None


def _tail_after_newline(fd: int, size: int, chunk: int = 1 << 16) -> bytes:
    end = size
    while end > 0:
        start = max(0, end - chunk)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return os.pread(fd, size - (start + cut + 1), start + cut + 1)
        end = start
    return os.pread(fd, size, 0)


def _check_regular_file(path: str) -> None:
    """A FIFO or device would block or be written to: refuse anything but a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UsageError(f"--storage {path!r}: not a regular file (a FIFO, device or directory); "
                         f"expected a .journal file or a new path")


def open_storage(url: str):
    """An Optuna storage for `url` (`journal:PATH`, a path ending in .journal, or an RDB URL)."""
    if url.startswith("journal:") or url.endswith(".journal"):
        path = Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return CheckedJournalStorage(RecoveringJournalBackend(str(path)))
        except OSError as e:
            raise UsageError(f"--storage {url!r}: cannot open the journal file ({e.strerror}); "
                             f"expected a writable path") from None
    if url.startswith("sqlite") and url.split("://", 1)[-1] in ("", "/", "/:memory:"):
        raise UsageError(f"--storage {url!r}: an in-memory SQLite database keeps nothing; "
                         f"expected sqlite:///path/to/file.db")
    if url.startswith("sqlite:///"):
        _check_sqlite_file(url, url.removeprefix("sqlite:///"))
    if "://" not in url:
        raise UsageError(f"--storage {url!r}: not a storage URL; expected journal:PATH, a .journal file, "
                         f"or an RDB URL like postgresql://user:pw@host/db or sqlite:///file.db")
    try:
        return RetryingRDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                          engine_kwargs=_engine_kwargs(url))
    except Exception as e:  # sqlalchemy raises many types for bad URLs / unreachable servers
        raise UsageError(f"--storage {url!r}: cannot connect ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _check_sqlite_file(url: str, path: str) -> None:
    """An existing file that is not an SQLite database (a user's text file) is refused, not written to."""
    try:
        _check_regular_file(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"--storage {url!r}: cannot read {path!r} ({e.strerror})") from None
    if head and head != b"SQLite format 3\x00":
        raise UsageError(f"--storage {url!r}: {path!r} exists and is not an SQLite database; "
                         f"expected an SQLite file or a new path")


POSTGRES_CONNECT_TIMEOUT_S = 10


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}}
    return {"pool_pre_ping": True}


RETRY_FOR_S = float(os.environ.get("NAS_STORAGE_RETRY_S", 300))  # how long a database may be away
_retry_state = threading.local()


def _transient(e: BaseException) -> bool:
    """A lost or refused database connection (worth retrying), not a bad query or a conflict."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    # the whole chain: a session whose connection was lost mid-transaction raises PendingRollbackError,
    # caused by the OperationalError, inside Optuna's StorageInternalError (three links deep)
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OperationalError) or (isinstance(e, DBAPIError) and e.connection_invalidated):
            return True
        e = e.__cause__ or e.__context__
    return False


def _retrying(method):
    def call(self, *args, **kwargs):
        if getattr(_retry_state, "depth", 0):  # an inner call: the outermost one retries
            return method(self, *args, **kwargs)
        _retry_state.depth = 1
        try:
            deadline, wait, warned = time.monotonic() + RETRY_FOR_S, 0.5, False
            while True:
                try:
                    result = method(self, *args, **kwargs)
                    if warned:
                        print("nas: storage: database reachable again; carrying on", file=sys.stderr, flush=True)
                    return result
                except Exception as e:
                    if not _transient(e) or time.monotonic() + wait > deadline:
                        raise
                    if not warned:
                        print(f"nas: storage: database unreachable ({type(e).__name__}); retrying for up to "
                              f"{RETRY_FOR_S:.0f} s (NAS_STORAGE_RETRY_S)", file=sys.stderr, flush=True)
                        warned = True
                    time.sleep(wait)
                    wait = min(wait * 2, 8.0)
        finally:
            _retry_state.depth = 0
    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every public call is retried with backoff (0.5 s doubling to
    8 s) while the database is unreachable, for up to RETRY_FOR_S; then the error is raised
    and the search stops with its finished trials kept. Wrapping is needed because
    RDBStorage raises StorageInternalError on the first lost connection, which kills the
    worker (a restarted or briefly stopped PostgreSQL server)."""


# Every method, private ones too: Optuna wraps an RDBStorage in _CachedStorage, which calls
# private ones (_get_trials, _create_new_trial, ...) directly; an inner call only passes through.
# Static methods take no storage and are left as they are.
for _name, _method in vars(RDBStorage).items():
    if inspect.isfunction(_method) and not _name.startswith("__"):
        setattr(RetryingRDBStorage, _name, _retrying(_method))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's worker: only RDB heartbeats can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


ORPHAN_GRACE_S = 10.0  # a live worker names itself on its trial as the objective's first write


def fail_dead_local_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials whose local worker process is gone FAIL; re-enqueue their params.

    A trial with no worker recorded was created by a worker killed before the objective's
    first write (a live one writes it within microseconds of creating the trial): it is
    failed once it is ORPHAN_GRACE_S old, waiting out the rest of that grace if it is younger."""
    if isinstance(study._storage, RDBStorage):
        optuna.storages.fail_stale_trials(study)  # heartbeat-based, any machine
        return 0

    def running():
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    orphans = [t for t in running() if not TrialRecord.of(t).worker]
    if orphans:
        now = datetime.datetime.now()
        ages = [(now - t.datetime_start).total_seconds() for t in orphans if t.datetime_start]
        youngest = min(ages, default=ORPHAN_GRACE_S)
        if 0 <= youngest < ORPHAN_GRACE_S:
            time.sleep(ORPHAN_GRACE_S - youngest)
    orphan_ids = {t._trial_id for t in orphans}
    n = 0
    for t in running():
        worker = TrialRecord.of(t).worker
        if (worker and not _alive(worker)) or (not worker and t._trial_id in orphan_ids):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs=trial_attrs(retry_of=t.number))
            n += 1
    return n
