"""Pick a deterministic, stratified set of LIDC patients to render."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lungslice.errors import ConfigError
from lungslice.lidc.nodules import find_nodules
from lungslice.lidc.records import LidcScan

__all__ = ["MALIGNANT_THRESHOLD", "select_patients", "stratum_by_patient"]

#: A nodule counts as malignant when its mean malignancy rating is at least this.
MALIGNANT_THRESHOLD = 3.0
_STRATA = ("malignant", "benign", "nodule-free")


def stratum_by_patient(scans: Iterable[LidcScan]) -> dict[str, str]:
    """Each patient's stratum: "malignant", "benign" (nodules, none malignant) or "nodule-free".

    A patient with several scans takes the most suspicious of them. A nodule is
    malignant when its readers' mean malignancy is >= :data:`MALIGNANT_THRESHOLD`.
    """
    rank = {name: i for i, name in enumerate(_STRATA)}
    out: dict[str, str] = {}
    for scan in scans:
        nodules = find_nodules(scan)
        if any(n.mean_malignancy >= MALIGNANT_THRESHOLD for n in nodules):
            stratum = "malignant"
        elif nodules:
            stratum = "benign"
        else:
            stratum = "nodule-free"
        old = out.get(scan.patient_id)
        if old is None or rank[stratum] < rank[old]:
            out[scan.patient_id] = stratum
    return out


def _allocation(n: int, available: dict[str, int]) -> dict[str, int]:
    # ~20 % nodule-free, the rest split 60/40 malignant/benign; each stratum at least
    # one patient when n allows, never more than it holds
    want = {"nodule-free": max(1, round(0.2 * n))}
    rest = n - want["nodule-free"]
    want["benign"] = max(1, round(0.4 * rest))
    want["malignant"] = max(1, rest - want["benign"])
    if n < 3:
        want = {"malignant": min(n, 1), "benign": min(max(n - 1, 0), 1), "nodule-free": 0}
    take = {s: min(want[s], available.get(s, 0)) for s in _STRATA}
    short = n - sum(take.values())
    for s in _STRATA:  # fill what a small stratum could not give from the others
        extra = min(short, available.get(s, 0) - take[s])
        take[s] += extra
        short -= extra
    return take


def select_patients(scans: Iterable[LidcScan], n: int, seed: int = 0) -> list[str]:
    """Choose ``n`` patients, deterministically, so every stratum appears.

    Parameters
    ----------
    scans : iterable of LidcScan
        The candidates (e.g. all of :func:`lungslice.lidc.db.read_database`).
    n : int
        How many patients.
    seed : int
        Seeds the draw within each stratum.

    Returns
    -------
    list of str
        Sorted patient ids: about 20 % nodule-free, the rest ~60 % with a
        malignant nodule and ~40 % benign-only (each stratum at least one when
        ``n >= 3`` and the candidates have one).

    Raises
    ------
    ConfigError
        If ``n`` is not positive or exceeds the number of patients.
    """
    strata = stratum_by_patient(scans)
    if n < 1 or n > len(strata):
        raise ConfigError(
            f"select_patients: n must be between 1 and the {len(strata)} patients available, "
            f"got {n}"
        )
    rng = np.random.default_rng(seed)
    pools = {s: sorted(p for p, st in strata.items() if st == s) for s in _STRATA}
    take = _allocation(n, {s: len(v) for s, v in pools.items()})
    chosen: list[str] = []
    for s in _STRATA:
        pool = pools[s]
        order = rng.permutation(len(pool))
        chosen.extend(pool[i] for i in order[: take[s]])
    return sorted(chosen)
