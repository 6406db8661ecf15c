"""Resuming a killed search, and several workers sharing one study (SQLite and PostgreSQL).

These start real `archc search` processes: what is tested is what happens to a
study when processes die or race, which in-process runs cannot show.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import ROOT, search_cmd, start, states, study_of, subprocess_env, write_spec

# Training batches that take a while, so that workers overlap and a kill lands mid-trial.
SLOW = '''
import time
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate
from archc.runtime.data import digits


def _slow(batch, delay=0.25):
    time.sleep(delay)
    return default_collate(batch)


def load():
    parts = digits()
    train = DataLoader(TensorDataset(*parts["train"]), batch_size=64, shuffle=True, collate_fn=_slow,
                       generator=torch.Generator().manual_seed(0))
    return train, DataLoader(TensorDataset(*parts["val"]), batch_size=512)
'''

PLAN = 'search W for Tiny() {{\n    strategy("{strategy}", trials={trials})\n    data("slow_data:load")\n' \
       '    budget(steps=3)\n    seed(0)\n}}\n'


def _spec(tmp_path, strategy="random", trials=8):
    (tmp_path / "slow_data.py").write_text(SLOW)
    return write_spec(tmp_path, PLAN.format(strategy=strategy, trials=trials))


def _wait_for(pred, timeout=300.0, every=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError


def _complete(spec, plan, storage=None) -> int:
    try:
        return states(study_of(spec, plan, storage)).get("COMPLETE", 0)
    except KeyError:  # the study does not exist yet
        return 0


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_requested_trials(tmp_path):
    spec = _spec(tmp_path, trials=6)
    out = tmp_path / "best.arch"
    proc = start(search_cmd(spec, "W", "-o", str(out)))
    try:
        _wait_for(lambda: _complete(spec, "W") >= 2 or proc.poll() is not None)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    study = study_of(spec, "W")
    before = states(study)
    assert before.get("COMPLETE", 0) < 6, f"the worker finished before it was killed: {before}"
    assert not out.exists()

    r = subprocess.run(search_cmd(spec, "W", "-o", str(out), "--json"), cwd=ROOT, env=subprocess_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    after = states(study)
    assert after.get("COMPLETE") == 6 and "RUNNING" not in after, after
    assert json.loads(r.stdout)["ran"] == 6 - before.get("COMPLETE", 0)
    # the trial that was running when the worker died is failed, with the reason
    assert after.get("FAIL", 0) == before.get("RUNNING", 0)
    for t in study.trials:
        if t.state.name == "FAIL":
            assert t.user_attrs["archc.failed"] == "its worker process died"
    assert out.exists()


def _two_workers(tmp_path, storage: str | None, strategy: str = "random", trials: int = 8):
    spec = _spec(tmp_path, strategy, trials)
    extra = ["--storage", storage] if storage else []
    procs = [start(search_cmd(spec, "W", "-o", str(tmp_path / f"best{i}.arch"), "--json", *extra))
             for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, out + err
        results.append(json.loads(out))
    study = study_of(spec, "W", storage)
    assert states(study) == {"COMPLETE": trials}, states(study)  # no surplus, no failure, none lost
    assert sorted(t.number for t in study.trials) == list(range(trials))
    workers = [t.system_attrs["archc.worker"] for t in study.trials]
    assert len(set(workers)) == 2, "both workers ran trials"
    assert sum(r["ran"] for r in results) == trials
    assert sorted(workers.count(w) for w in set(workers)) == sorted(r["ran"] for r in results)
    assert all(r["complete"] == trials for r in results)


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(tmp_path):
    _two_workers(tmp_path, None)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(tmp_path, postgres_url):
    _two_workers(tmp_path, postgres_url, strategy="tpe")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_trials_left_running_by_dead_workers_are_failed_and_replaced(tmp_path):
    """A worker killed mid-trial (a pid that is gone) or mid-claim (no worker recorded yet)."""
    import socket

    from archc.search.storage import WORKER_ATTR, _boot_id

    from .conftest import run_cli

    spec = write_spec(tmp_path, 'search R for Tiny() {\n    strategy("random", trials=2)\n    FAST\n}\n')
    assert run_cli(str(spec), "--plan", "R", "--trials", "1", "--quiet", "--threads", "1") == 0
    study = study_of(spec, "R")
    killed = study.ask()  # as a worker that died while training
    study._storage.set_trial_system_attr(killed._trial_id, WORKER_ATTR,
                                         f"{socket.gethostname()}|{_boot_id()}|{2**22 + 4321}")
    study.ask()  # as a worker that died between creating the trial and recording itself
    assert run_cli(str(spec), "--plan", "R", "--trials", "3", "--quiet", "--threads", "1") == 0
    assert states(study) == {"COMPLETE": 3, "FAIL": 2}
    assert all(t.user_attrs["archc.failed"] == "its worker process died" for t in study.trials
               if t.state.name == "FAIL")
