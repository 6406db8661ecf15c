"""Helpers for the search tests: a tiny space on digits, and running `archc search`."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# 2 x 2 = 4 candidates; trains in a fraction of a second.
TINY = """
model Tiny(classes: int = 10) {
    input x: float32[B, 1, 8, 8]
    x = x -> conv(choice(4, 8, label="width"), 3, padding=1) -> choice(relu, gelu, label="act")
          -> max_pool(2) -> flatten
    output logits = x -> fc: linear(classes)
}
"""

# A choice that opens further choices: each copy of the block has its own activation choice.
NESTED = """
block Blk(x, w: int) {
    return x -> conv(w, 3, padding=1) -> choice(relu, gelu, identity)
}
model Nested(classes: int = 10) {
    input x: float32[B, 1, 8, 8]
    width = choice(4, 8, label="width")
    x = x -> conv(width, 3, padding=1) -> body: [Blk(width) * choice(1, 2, label="depth")]
    output logits = x -> global_avg_pool -> flatten -> linear(classes)
}
"""

FAST = 'data("digits")\n    budget(steps=3, batch=64)\n    seed(0)'


def write_spec(folder: Path, plans: str, model: str = TINY, stem: str | None = None) -> Path:
    """A spec file holding `model` and `plans`, with a unique name (so a unique study)."""
    stem = stem or f"space_{uuid.uuid4().hex[:8]}"
    path = folder / f"{stem}.arch"
    path.write_text(model + "\n" + plans.replace("FAST", FAST))
    return path


def search_cmd(spec: Path, plan: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "archc", "search", str(spec), "--plan", plan, "--threads", "1", "--quiet",
            *extra]


def run_cli(*argv: str) -> int:
    from archc.cli import main

    return main(["search", *argv])


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def study_of(spec: Path, plan: str, storage: str | None = None):
    """The optuna study a plan runs in."""
    import optuna

    import archc
    from archc.search import load_config

    cfg = load_config(archc.load(spec), plan, storage=storage)
    from archc.search.storage import open_storage

    return optuna.load_study(study_name=cfg.study_name, storage=open_storage(cfg.storage))


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.fixture(autouse=True)
def _restore_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _start_postgres() -> tuple[str | None, str]:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh")], capture_output=True, text=True,
                       timeout=600)
    url = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None
    return url, (r.stderr.strip() or f"scripts/postgres.sh exited with {r.returncode}")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL server: ARCHC_TEST_PG_URL (CI starts one), else one started by scripts/postgres.sh."""
    url = os.environ.get("ARCHC_TEST_PG_URL")
    why = ""
    if not url:
        url, why = _start_postgres()
    if not url:
        pytest.skip(f"no PostgreSQL server could be started: {why}")
    try:
        from archc.search.storage import open_storage

        open_storage(url)
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {url} cannot be used: {e}")
    return url
