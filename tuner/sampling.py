"""The sampler a search asks: TPE (default), GP, random, or every config of the grid as queued trials. Pure Optuna."""

from __future__ import annotations

import random
from typing import Any

import optuna

from tuner.errors import BadInput
from tuner.space import Space


def make_sampler(name: str, seed: int, trials: int, shared: bool = False) -> optuna.samplers.BaseSampler:
    """TPE (default), GP (needs the gp extra), or random; constraints come from trial.set_constraint. The grid's
    configs are queued trials (grid_params), so its sampler is random and never asked.

    shared: many workers ask at once, so TPE treats running trials as bad (constant_liar) and each worker seeds
    differently (a seed would make every worker propose the same configs)."""
    startup = max(2, min(10, trials // 3))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=None if shared else seed, n_startup_trials=startup,
                                          multivariate=True, constant_liar=shared)
    if name == "gp":
        try:
            import scipy  # noqa: F401  (optional: greentune[gp])
            import torch  # noqa: F401
        except ImportError:
            raise BadInput("--sampler gp needs torch and scipy: pip install 'greentune[gp]'") from None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=None if shared else seed)


def grid_params(space: Space, seed: int) -> list[dict[str, Any]]:
    """Optuna params of every distinct config in the space, in an order shuffled by the seed (as GridSampler would)."""
    params = [space.params_of(config) for config in space.grid_configs()]
    random.Random(seed).shuffle(params)
    return params
