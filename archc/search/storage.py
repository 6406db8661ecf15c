"""Where a search's study lives, and how workers share it.

- `open_storage(url)`: an Optuna RDBStorage (SQLite, PostgreSQL, MySQL...) with
  heartbeats, so a trial whose worker died is failed and its place taken again.
- `StudyLock`: workers start trials one at a time per study, so that together
  they start exactly as many as are missing: a file lock beside a SQLite
  database, an advisory lock on PostgreSQL (`GET_LOCK` on MySQL). Other
  storages run without one, and a surplus trial is then failed at once.
- `worker_id()` / `reap_dead_trials`: a trial records the worker that runs it
  (host, boot, pid); a worker on the same machine fails trials whose process
  is gone at once, without waiting for their heartbeat to go stale.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import warnings

import optuna
from optuna.trial import TrialState

WORKER_ATTR = "archc.worker"
HEARTBEAT_S = 10
GRACE_S = 120  # a busy machine may delay a beat; a dead worker elsewhere is noticed after this


class StorageError(Exception):
    """A storage that cannot be opened; the message says why."""


def _with_driver(url: str) -> str:
    """`postgresql://` means psycopg (3) to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    import importlib.util

    m = url.split("://", 1)
    if len(m) == 2 and m[0].lower() in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + m[1]
        if m[0].lower() == "postgres":
            return "postgresql://" + m[1]
    return url


def open_storage(url: str, *, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S) -> optuna.storages.RDBStorage:
    engine: dict = {}
    dialect = url.split(":", 1)[0].split("+")[0].lower()
    url = _with_driver(url)
    if dialect == "sqlite":
        engine = {"connect_args": {"timeout": 120}}
    elif dialect in ("postgresql", "postgres"):
        engine = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        for attempt in range(5):
            try:
                with _creation_lock(url), warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                      grace_period=grace)
            except Exception as e:  # two workers creating the schema at once: the loser retries
                text = str(e).lower()
                if attempt == 4 or not any(k in text for k in ("unique", "already exists", "duplicate")):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as e:
        raise StorageError(f"the database driver for `{dialect}` is not installed; "
                           + ("pip install psycopg2-binary" if dialect.startswith("postgres") else
                              f"install a SQLAlchemy driver for {dialect}")) from e
    except Exception as e:  # sqlalchemy's OperationalError, ArgumentError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(first) from e


class _creation_lock:
    """Around creating the tables of a SQLite storage: the study lock's file, taken early."""

    def __init__(self, url: str):
        path = url.split(":///", 1)[1] if url.lower().startswith("sqlite") and ":///" in url else None
        self.path = path + ".lock" if path and path != ":memory:" and os.path.isdir(os.path.dirname(path) or ".") \
            else None
        self.fd = None

    def __enter__(self):
        if self.path:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "?"


def worker_id() -> str:
    return f"{socket.gethostname()}|{_boot_id()}|{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def reap_dead_trials(study: optuna.Study, orphans: bool = False) -> int:
    """Fail running trials of this machine whose worker process is gone; returns how many.

    With `orphans` (only under the study's lock, where no claim is half done), also
    fail running trials that name no worker: their worker died while claiming them."""
    host, boot, _ = worker_id().split("|")
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.system_attrs.get(WORKER_ATTR)
        parts = (w or "").split("|")
        if w is None and orphans:
            dead = True
        elif len(parts) != 3 or parts[0] != host or parts[1] != boot:
            continue
        else:
            dead = not _alive(int(parts[2]))
        if dead:
            try:
                study._storage.set_trial_user_attr(t._trial_id, "archc.failed", "its worker process died")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                n += 1
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other machines' dead workers, by heartbeat
    return n


class Heartbeat:
    """Records a trial's heartbeat every few seconds while it runs (a daemon thread)."""

    def __init__(self, storage, trial_id: int, interval: float = HEARTBEAT_S):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a transient database error: try again next beat
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)


class StudyLock:
    """A lock per study shared by all workers on one storage (see the module docstring)."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_name: str):
        self.url = storage.url
        self.engine = storage.engine
        self.name = study_name
        self.dialect = self.engine.dialect.name
        self._fd = None
        self._conn = None
        self.exact = self.dialect in ("sqlite", "postgresql", "mysql", "mariadb")
        self._local = threading.Lock()

    def _sqlite_file(self) -> str | None:
        db = self.engine.url.database
        return db if db and db != ":memory:" else None

    def __enter__(self):
        self._local.acquire()
        try:
            if self.dialect == "sqlite" and self._sqlite_file():
                import fcntl

                self._fd = os.open(self._sqlite_file() + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            elif self.dialect == "postgresql":
                from sqlalchemy import text

                self._conn = self.engine.connect()
                self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(self.name)})
                self._conn.commit()
            elif self.dialect in ("mysql", "mariadb"):
                from sqlalchemy import text

                self._conn = self.engine.connect()
                self._conn.execute(text("SELECT GET_LOCK(:k, -1)"), {"k": "archc:" + self.name[:50]})
        except BaseException:
            self._release()
            raise
        return self

    def _release(self) -> None:
        try:
            if self._fd is not None:
                import fcntl

                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            if self._conn is not None:
                from sqlalchemy import text

                try:
                    if self.dialect == "postgresql":
                        self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(self.name)})
                        self._conn.commit()
                    else:
                        self._conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": "archc:" + self.name[:50]})
                finally:
                    self._conn.close()
        finally:
            self._fd = self._conn = None
            self._local.release()

    def __exit__(self, *exc) -> None:
        self._release()
