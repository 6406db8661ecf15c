"""The strategies of `search` plans as Optuna samplers, so that every strategy shares one
study, one storage and one way to resume and scale out.

random, grid, evolution and rl are archc's own samplers; tpe and nsga2 are Optuna's.
Each decision of a candidate is one categorical Optuna parameter named by the
choice's label, whose values are candidate indices. archc's samplers keep no state
between trials: what they need (the grid's visited points, evolution's
population, the controller's weights) is rebuilt from the study's trials at the
start of every trial, so a resumed search or a second worker continues exactly
where the study stands. Their randomness is seeded by (plan seed, trial number):
reproducible, and different on every trial whichever worker runs it.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

GRID_ATTR = "archc.grid"
REJECTED_ATTR = "archc.rejected"


def _finished_order(t: FrozenTrial):
    return (t.datetime_complete.timestamp() if t.datetime_complete else math.inf, t.number)


class ArchSampler(BaseSampler):
    """Base of archc's samplers: `propose` decides some labels when a trial starts;
    the rest are drawn uniformly at random."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._proposals: dict[int, dict[str, int]] = {}
        self._rngs: dict[int, np.random.Generator] = {}

    # -- what subclasses write
    def propose(self, study, trial: FrozenTrial, rng: np.random.Generator) -> dict[str, int]:
        return {}

    def draw(self, trial: FrozenTrial, name: str, n: int, rng: np.random.Generator) -> int:
        return int(rng.integers(n))

    # -- Optuna's interface
    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def before_trial(self, study, trial: FrozenTrial) -> None:
        rng = np.random.default_rng([self.seed % 2**32, trial.number])
        self._rngs[trial.number] = rng
        self._proposals[trial.number] = self.propose(study, trial, rng)

    def sample_independent(self, study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        assert isinstance(param_distribution, CategoricalDistribution), "archc suggests categorical decisions"
        n = len(param_distribution.choices)
        rng = self._rngs.get(trial.number) or np.random.default_rng([self.seed % 2**32, trial.number])
        v = self._proposals.get(trial.number, {}).get(param_name)
        if v is None or not 0 <= v < n:
            v = self.draw(trial, param_name, n, rng)
        return param_distribution.choices[v]

    def after_trial(self, study, trial, state, values) -> None:
        self._proposals.pop(trial.number, None)
        self._rngs.pop(trial.number, None)

    def exhausted(self, study) -> bool:
        """True when this strategy has nothing left to propose (the grid is done)."""
        return False


class RandomArchSampler(ArchSampler):
    """Every decision uniformly at random."""


class GridArchSampler(ArchSampler):
    """Every candidate once, in the order `enumerate_candidates` lists them (depth first).

    A point is taken by a trial that is running, complete or pruned (including
    candidates a constraint rejected); a failed trial (a killed worker) frees it."""

    def __init__(self, grid: Sequence[dict[str, int]], seed: int = 0):
        super().__init__(seed)
        self.grid = list(grid)

    def _taken(self, study) -> set[int]:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        return {t.system_attrs[GRID_ATTR] for t in study.get_trials(deepcopy=False, states=states)
                if GRID_ATTR in t.system_attrs}

    def propose(self, study, trial, rng) -> dict[str, int]:
        taken = self._taken(study)
        k = next((i for i in range(len(self.grid)) if i not in taken), None)
        if k is None:  # the driver stops before this; a duplicate is harmless
            k = int(rng.integers(len(self.grid)))
        study._storage.set_trial_system_attr(trial._trial_id, GRID_ATTR, k)
        return dict(self.grid[k])

    def exhausted(self, study) -> bool:
        return len(self._taken(study)) >= len(self.grid)


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    better = [s * x > s * y for x, y, s in zip(a, b, signs)]
    worse = [s * x < s * y for x, y, s in zip(a, b, signs)]
    return any(better) and not any(worse)


class EvolutionArchSampler(ArchSampler):
    """Regularized evolution (Real et al. 2019, "Regularized Evolution for Image
    Classifier Architecture Search").

    The first `population` candidates are random. After that, each trial samples
    `sample` members of the population (the `population` most recently completed
    trials: the oldest dies as each new one joins, "aging"), takes the best of them
    (for several objectives: one not dominated by the others in the sample, at
    random) and mutates it: one of its decisions changes to another candidate, and
    choices that this opens are drawn at random.
    """

    def __init__(self, directions: Sequence[str], population: int = 20, sample: int = 5, seed: int = 0):
        super().__init__(seed)
        self.signs = [1.0 if d == "maximize" else -1.0 for d in directions]
        self.population = population
        self.sample = min(sample, population)

    def propose(self, study, trial, rng) -> dict[str, int]:
        done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=_finished_order)
        if len(done) < self.population:
            return {}
        pop = done[-self.population:]
        contenders = [pop[i] for i in rng.choice(len(pop), size=self.sample, replace=False)]
        if len(self.signs) == 1:
            s = self.signs[0]
            parent = max(contenders, key=lambda t: (s * t.values[0], -t.number))
        else:
            front = [t for t in contenders
                     if not any(_dominates(u.values, t.values, self.signs) for u in contenders if u is not t)]
            parent = front[int(rng.integers(len(front)))]
        child = {k: int(v) for k, v in parent.params.items()}
        mutable = [k for k in child if len(parent.distributions[k].choices) > 1]
        if mutable:
            label = mutable[int(rng.integers(len(mutable)))]
            n = len(parent.distributions[label].choices)
            others = [v for v in range(n) if v != child[label]]
            child[label] = others[int(rng.integers(len(others)))]
        return child


class ReinforceArchSampler(ArchSampler):
    """A REINFORCE controller (Williams 1992), as in Zoph & Le 2017, "Neural Architecture
    Search with Reinforcement Learning", with one softmax policy per decision.

    The policy is rebuilt at the start of each trial by replaying the study's finished
    trials in the order they finished: reward R is the objective (negated when it is
    minimized; a pruned trial's last intermediate value), the baseline b an
    exponential moving average of past rewards, and each decision a taken moves
    its logits by lr * A * (onehot(a) - softmax), where the advantage A = (R - b) / std
    is normalised by a moving standard deviation and clipped to [-3, 3]. A candidate
    a constraint rejected gets A = -1.
    """

    def __init__(self, direction: str, lr: float = 0.2, decay: float = 0.9, seed: int = 0):
        super().__init__(seed)
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.lr, self.decay = lr, decay
        self._logits: dict[int, dict[str, np.ndarray]] = {}

    def policy(self, study) -> dict[str, np.ndarray]:
        logits: dict[str, np.ndarray] = {}
        baseline, var = None, 1.0
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        for t in sorted(trials, key=_finished_order):
            if t.state == TrialState.COMPLETE:
                reward = self.sign * t.values[0]
            elif t.intermediate_values:
                reward = self.sign * t.intermediate_values[max(t.intermediate_values)]
            else:
                reward = None
            if reward is None or not math.isfinite(reward):
                adv = -1.0 if t.user_attrs.get(REJECTED_ATTR) else 0.0
            elif baseline is None:
                baseline, adv = reward, 0.0
            else:
                adv = float(np.clip((reward - baseline) / math.sqrt(var + 1e-12), -3, 3))
                var = self.decay * var + (1 - self.decay) * (reward - baseline) ** 2
                baseline = self.decay * baseline + (1 - self.decay) * reward
            if adv == 0.0:
                continue
            for label, value in t.params.items():
                n = len(t.distributions[label].choices)
                theta = logits.setdefault(label, np.zeros(n))
                p = _softmax(theta)
                grad = -p
                grad[int(value)] += 1.0
                theta += self.lr * adv * grad
        return logits

    def propose(self, study, trial, rng) -> dict[str, int]:
        self._logits[trial.number] = self.policy(study)
        return {}

    def draw(self, trial, name, n, rng) -> int:
        theta = self._logits.get(trial.number, {}).get(name)
        if theta is None or len(theta) != n:
            return int(rng.integers(n))
        return int(rng.choice(n, p=_softmax(theta)))

    def after_trial(self, study, trial, state, values) -> None:
        super().after_trial(study, trial, state, values)
        self._logits.pop(trial.number, None)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def make_sampler(cfg, grid: Sequence[dict[str, int]] | None = None, worker: int = 0) -> BaseSampler:
    """The sampler a SearchConfig's strategy names. `worker` varies Optuna's own samplers'
    seeds between workers (archc's samplers seed each trial by its number instead)."""
    opts, seed = cfg.options, cfg.seed
    if cfg.strategy == "random":
        return RandomArchSampler(seed)
    if cfg.strategy == "grid":
        assert grid is not None
        return GridArchSampler(grid, seed)
    if cfg.strategy == "evolution":
        pop = opts.get("population") or max(2, min(20, cfg.trials // 3))
        return EvolutionArchSampler(cfg.directions, pop, opts.get("sample") or max(2, min(5, pop // 2)), seed)
    if cfg.strategy == "rl":
        return ReinforceArchSampler(cfg.directions[0], lr=opts.get("lr") or 0.2, seed=seed)
    worker_seed = (seed + 1_000_003 * worker) % 2**31
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.strategy == "tpe":
            startup = opts.get("startup") or max(3, min(10, cfg.trials // 3))
            return optuna.samplers.TPESampler(seed=worker_seed, n_startup_trials=startup, multivariate=True,
                                              group=True, constant_liar=True)
        if cfg.strategy == "nsga2":
            pop = opts.get("population") or max(4, min(50, cfg.trials // 3))
            return optuna.samplers.NSGAIISampler(population_size=pop, seed=worker_seed)
    raise ValueError(f"no sampler for strategy `{cfg.strategy}`")


def make_pruner(cfg) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if not p or p["name"] == "none":
        return optuna.pruners.NopPruner()
    if p["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p["startup"], n_warmup_steps=p["warmup"])
    if p["name"] == "percentile":
        return optuna.pruners.PercentilePruner(p["percentile"], n_startup_trials=p["startup"],
                                               n_warmup_steps=p["warmup"])
    if p["name"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p["warmup"]))
    return optuna.pruners.HyperbandPruner(min_resource=max(1, p["warmup"]), max_resource=cfg.epochs or "auto")
