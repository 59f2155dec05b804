"""The one stratified splitter of the project: seeded, keyed on columns, returning row indices.

Everything that splits or samples labeled rows (the role split, the router's validation split,
benchmark and validation samples, budgets) calls `stratified_indices`; a stratum with a single
row cannot be split, so such rows are pooled into one stratum of their own first.
"""

import logging
from collections import Counter

import numpy as np

logger = logging.getLogger(__name__)
RARE = "\x00rare"


def strata_of(dataset, keys):
    """The joint value of `keys` per row, as one string (the stratum of each row)."""
    columns = [dataset[k] for k in keys]
    return ["|".join(str(v) for v in row) for row in zip(*columns)]


def stratified_indices(strata, test_size, seed=0):
    """(rest, test) sorted index lists of a seeded split stratified on `strata` (one label per row).

    `test_size` is a share (0 < x < 1) or a number of rows. Strata of one row are pooled; when
    stratifying is still impossible (a single pooled row, or more strata than test rows) the
    split is a plain seeded shuffle, with a warning.
    """
    from sklearn.model_selection import train_test_split

    n = len(strata)
    n_test = int(round(test_size * n)) if isinstance(test_size, float) and test_size < 1 else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"Cannot split {n} rows into a test part of {test_size} ({n_test} rows): it must be between 0 and {n} rows.")
    counts = Counter(strata)
    labels = [s if counts[s] > 1 else RARE for s in strata]
    pooled = Counter(labels)
    n_classes = len(pooled)
    stratify = labels if min(pooled.values()) >= 2 and n_classes <= n_test and n_classes <= n - n_test else None
    if stratify is None:
        logger.warning("Cannot stratify %d rows on %d strata into %d test rows: splitting without stratification.", n, n_classes, n_test)
    rest, test = train_test_split(np.arange(n), test_size=n_test, random_state=seed, stratify=stratify)
    return sorted(rest.tolist()), sorted(test.tolist())


def stratified_split(dataset, keys, test_size, seed=0):
    """(rest, test) index lists of `dataset`, stratified on the joint value of the columns `keys`."""
    return stratified_indices(strata_of(dataset, keys), test_size, seed)


def stratified_sample(dataset, n, keys, seed=0):
    """At most `n` rows of `dataset`, stratified on `keys` and seeded; all of it when it is not larger."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ValueError(f"A sample needs at least 1 row, got {n}.")
    return dataset.select(stratified_split(dataset, keys, int(n), seed)[1])
