"""archc's samplers on hand-made studies: what each proposes from a given history."""
from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from archc.search.samplers import (
    GRID_ATTR,
    REJECTED_ATTR,
    EvolutionArchSampler,
    GridArchSampler,
    ReinforceArchSampler,
    _softmax,
)

DIST = {"a": CategoricalDistribution([0, 1, 2]), "b": CategoricalDistribution([0, 1])}


def _study(history, direction="maximize", sampler=None):
    study = optuna.create_study(direction=direction, sampler=sampler)
    for params, value in history:  # trials complete in the order given
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        study.add_trial(create_trial(params=params, distributions=DIST, value=value, state=state,
                                     user_attrs={} if value is not None else {REJECTED_ATTR: "too big"}))
    return study


def _sample(study, n=1):
    out = []
    for _ in range(n):
        t = study.ask()
        out.append({k: t.suggest_categorical(k, list(d.choices)) for k, d in DIST.items()})
        study.tell(t, 0.0)
    return out


def test_evolution_mutates_the_tournament_winner():
    history = [({"a": 0, "b": 0}, 0.1), ({"a": 2, "b": 1}, 0.9), ({"a": 1, "b": 0}, 0.5)]
    sampler = EvolutionArchSampler(["maximize"], population=3, sample=3, seed=0)
    study = _study(history, sampler=sampler)
    (child,) = _sample(study)
    best = {"a": 2, "b": 1}
    assert sum(child[k] != best[k] for k in best) == 1  # one decision changed


def test_evolution_is_random_until_the_population_is_full():
    sampler = EvolutionArchSampler(["maximize"], population=5, sample=2, seed=0)
    study = _study([({"a": 0, "b": 0}, 0.1)], sampler=sampler)
    t = study.ask()
    assert sampler._proposals[t.number] == {}


def test_evolution_ages_out_the_oldest():
    # the best candidate is the oldest: with a population of 2 it is gone
    history = [({"a": 2, "b": 1}, 0.99), ({"a": 0, "b": 0}, 0.1), ({"a": 0, "b": 1}, 0.2)]
    sampler = EvolutionArchSampler(["maximize"], population=2, sample=2, seed=0)
    study = _study(history, sampler=sampler)
    (child,) = _sample(study)
    parent = {"a": 0, "b": 1}
    assert sum(child[k] != parent[k] for k in parent) == 1


def test_reinforce_learns_which_candidate_pays():
    history = [({"a": i % 3, "b": i % 2}, 1.0 if i % 3 == 2 else 0.0) for i in range(30)]
    sampler = ReinforceArchSampler("maximize", lr=0.5)
    study = _study(history, sampler=sampler)
    logits = sampler.policy(study)
    p = _softmax(logits["a"])
    assert p.argmax() == 2 and p[2] > 0.6
    # minimizing the same values: the controller avoids candidate 2
    sampler = ReinforceArchSampler("minimize", lr=0.5)
    p = _softmax(sampler.policy(_study(history, "minimize", sampler))["a"])
    assert p[2] < 0.2


def test_reinforce_pushes_away_from_rejected_candidates():
    history = [({"a": 0, "b": 0}, 0.5), ({"a": 1, "b": 0}, 0.5)] + [({"a": 2, "b": 1}, None)] * 5
    sampler = ReinforceArchSampler("maximize", lr=0.5)
    p = _softmax(sampler.policy(_study(history, sampler=sampler))["a"])
    assert p[2] < 1 / 3


def test_reinforce_samples_from_its_policy():
    history = [({"a": 1, "b": 0}, 1.0), ({"a": 0, "b": 0}, 0.0)] * 20
    sampler = ReinforceArchSampler("maximize", lr=0.5, seed=1)
    study = _study(history, sampler=sampler)
    picks = [s["a"] for s in _sample(study, 20)]
    assert np.mean(np.array(picks) == 1) > 0.6


def test_grid_takes_each_point_once_and_knows_when_it_is_done():
    grid = [{"a": a, "b": b} for a in range(3) for b in range(2)]
    sampler = GridArchSampler(grid)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen = []
    for _ in range(6):
        assert not sampler.exhausted(study)
        t = study.ask()
        seen.append({k: t.suggest_categorical(k, list(d.choices)) for k, d in DIST.items()})
        study.tell(t, 1.0)
    assert seen == grid and sampler.exhausted(study)


def test_grid_retakes_a_failed_point():
    grid = [{"a": 0, "b": 0}, {"a": 1, "b": 0}]
    sampler = GridArchSampler(grid)
    study = optuna.create_study(sampler=sampler)
    t = study.ask()
    study.tell(t, state=TrialState.FAIL)  # a worker died
    t = study.ask()
    assert study._storage.get_trial(t._trial_id).system_attrs[GRID_ATTR] == 0
