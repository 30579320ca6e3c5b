"""Where studies live.

Default: an Optuna journal file ``studies/<study>.journal`` — append-only with file locks,
safe for several local worker processes (no "database is locked"), readable by
optuna-dashboard. Any Optuna RDB URL (``postgresql://...``, ``sqlite:///...``) is used as
given; RDB storages get heartbeats, so a dead worker's RUNNING trial is marked FAIL and its
architecture re-enqueued (`RetryHeartbeatStaleTrialCallback`).

Journal files have no heartbeat; instead every trial records its worker (host, pid), and
`fail_dead_local_trials` marks RUNNING trials of dead local processes FAIL and re-enqueues
their parameters. It runs when a worker starts.
"""

import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import TrialState

from nas.errors import UsageError

# Heartbeats, RetryHeartbeatStaleTrialCallback and metric names are marked experimental in
# Optuna; they are what we rely on deliberately, so their warnings are noise to a user.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDIES_DIR = Path("studies")
HEARTBEAT_S = 15
GRACE_S = 60


def default_url(study: str) -> str:
    return f"journal:{STUDIES_DIR / (study + '.journal')}"


def open_storage(url: str):
    """An Optuna storage for `url` (`journal:PATH`, a path ending in .journal, or an RDB URL)."""
    if url.startswith("journal:") or url.endswith(".journal"):
        path = Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
        except OSError as e:
            raise UsageError(f"--storage {url!r}: cannot open the journal file ({e.strerror}); "
                             f"expected a writable path") from None
    if "://" not in url:
        raise UsageError(f"--storage {url!r}: not a storage URL; expected journal:PATH, a .journal file, "
                         f"or an RDB URL like postgresql://user:pw@host/db or sqlite:///file.db")
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                          engine_kwargs=_engine_kwargs(url))
    except Exception as e:  # sqlalchemy raises many types for bad URLs / unreachable servers
        raise UsageError(f"--storage {url!r}: cannot connect ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


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


def fail_dead_local_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials whose local worker process is gone FAIL; re-enqueue their params."""
    if isinstance(study._storage, RDBStorage):
        optuna.storages.fail_stale_trials(study)  # heartbeat-based, any machine
        return 0
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and not _alive(worker):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            n += 1
    return n
