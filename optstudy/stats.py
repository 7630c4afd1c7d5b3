"""Statistics over seeds: bootstrap intervals, paired differences, ranks, profiles.

Everything here takes plain tables (pandas frames or arrays) and never reads
the store, so each function is tested on hand-made numbers.
Resampling uses a fixed seed: the book shows the same interval on every
build of the same results.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

LEVEL = 0.95
RESAMPLES = 10_000
RANDOM_SEED = 0


def _rng(seed: int = RANDOM_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean(values, level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = RANDOM_SEED) -> tuple[float, float, float]:
    """Return the mean and a percentile-bootstrap interval of the mean.

    NaN values are dropped first. With no value all three are NaN; with one
    value the interval is NaN, because one seed carries no information about spread.
    """
    values = np.asarray([v for v in values if v is not None and not pd.isna(v)],
                        dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) == 1:
        return mean, math.nan, math.nan
    picks = _rng(seed).integers(0, len(values), size=(resamples, len(values)))
    low, high = _bounds(values[picks].mean(axis=1), level)
    return mean, low, high


def paired_differences(frame: pd.DataFrame, reference: str, value: str = "value",
                       level: float = LEVEL, resamples: int = RESAMPLES
                       ) -> pd.DataFrame:
    """Compare every optimizer with ``reference`` on the seeds both finished.

    ``frame`` has columns ``optimizer``, ``seed`` and ``value``. The result
    has one row per optimizer other than the reference: the number of shared
    seeds, the mean difference (optimizer minus reference) with its bootstrap
    interval over those pairs, and on how many seeds the optimizer was ahead.
    """
    columns = ["optimizer", "pairs", "mean", "low", "high", "ahead"]
    frame = frame.dropna(subset=[value])
    base = frame[frame["optimizer"] == reference].set_index("seed")[value]
    rows = []
    for optimizer, group in frame.groupby("optimizer", sort=False):
        if optimizer == reference:
            continue
        mine = group.set_index("seed")[value]
        shared = mine.index.intersection(base.index)
        differences = (mine.loc[shared] - base.loc[shared]).to_numpy(dtype=float)
        mean, low, high = bootstrap_mean(differences, level, resamples)
        rows.append([optimizer, len(shared), mean, low, high,
                     int((differences > 0).sum())])
    return pd.DataFrame(rows, columns=columns)


def rank_means(means: dict[str, float]) -> dict[str, float]:
    """Rank by mean, 1 for the highest; equal means share the better rank."""
    series = pd.Series(means, dtype=float)
    return series.rank(ascending=False, method="min").to_dict()


def bootstrap_ranks(frame: pd.DataFrame, value: str = "value", level: float = LEVEL,
                    resamples: int = 2_000, seed: int = RANDOM_SEED) -> pd.DataFrame:
    """Rank optimizers by mean ``value`` and give each rank a bootstrap interval.

    Each resample draws every optimizer's seeds with replacement,
    independently, and ranks the resampled means. The result has one row per
    optimizer: the rank of the observed means, the interval of the
    resampled ranks, and the share of resamples in which it ranked first.
    """
    columns = ["optimizer", "rank", "rank_low", "rank_high", "p_first"]
    frame = frame.dropna(subset=[value])
    groups = {name: group[value].to_numpy(dtype=float)
              for name, group in frame.groupby("optimizer", sort=False)}
    if not groups:
        return pd.DataFrame(columns=columns)
    names = list(groups)
    observed = rank_means({name: values.mean() for name, values in groups.items()})
    rng = _rng(seed)
    resampled = np.empty((resamples, len(names)))
    for column, name in enumerate(names):
        values = groups[name]
        picks = rng.integers(0, len(values), size=(resamples, len(values)))
        resampled[:, column] = values[picks].mean(axis=1)
    ranks = pd.DataFrame(resampled).rank(axis=1, ascending=False, method="min")
    ranks = ranks.to_numpy()
    rows = []
    for column, name in enumerate(names):
        low, high = _bounds(ranks[:, column], level)
        rows.append([name, observed[name], low, high,
                     float((ranks[:, column] == 1).mean())])
    return pd.DataFrame(rows, columns=columns).sort_values(["rank", "optimizer"])


def performance_profile(times: pd.DataFrame, taus) -> pd.DataFrame:
    """Return, per optimizer and factor tau, the share of problems solved within tau.

    ``times`` has one row per problem and one column per optimizer, holding
    the time to reach the target; NaN or infinity means not reached. On each
    problem an optimizer's ratio is its time over the fastest time on that
    problem; its profile at tau is the share of problems where the ratio is
    at most tau (Dolan and More, 2002). A problem that no optimizer solved
    stays in the denominator, so no profile climbs to 1 on a study where some
    target was never reached.
    """
    values = times.astype(float).replace([np.inf, -np.inf], np.nan)
    fastest = values.min(axis=1, skipna=True)
    ratios = values.div(fastest, axis=0)
    problems = len(values)
    rows = []
    for optimizer in values.columns:
        column = ratios[optimizer]
        for tau in taus:
            solved = int((column <= tau).sum())
            rows.append([optimizer, float(tau), solved / problems if problems
                         else math.nan])
    return pd.DataFrame(rows, columns=["optimizer", "tau", "share"])


def first_reach(checks: pd.DataFrame, target: float) -> tuple[float, float]:
    """Return the (step, training seconds) of the first check at or above ``target``.

    ``checks`` has columns step, train_seconds and valid_accuracy. Returns
    NaN for both when the target is never reached.
    """
    reached = checks[checks["valid_accuracy"] >= target].sort_values("step")
    if reached.empty:
        return math.nan, math.nan
    first = reached.iloc[0]
    return float(first["step"]), float(first["train_seconds"])
