"""The candidate path, evaluated: labelled candidates, patient-grouped CV, FROC and slice figures.

:func:`build_candidate_set` joins a candidate cache with the readers' labels:
each candidate inside a counted nodule (its sphere, see
:func:`lungslice.candidates.labels.match_candidates`) is that nodule's class,
every other candidate (vessels included) is a negative, and candidates on
nodules the label rule excludes are left out of training and scoring.

:func:`cross_validate_candidates` fits the candidate classifier on patient-
grouped folds and turns the out-of-fold candidate probabilities into what the
tool reports (:func:`lungslice.model.findings.study_findings`): slice
probabilities, ranked findings with their location, study scores. The tables
it returns give every figure with a bootstrap CI over patients
(:func:`candidate_figures` with :func:`lungslice.model.metrics.bootstrap`):

- detection: FROC and CPM as LUNA16 defines them (mean sensitivity at 1/8 ...
  8 false positives per scan), with the findings as detections;
- slices: ROC-AUC nodule-vs-none and malignant-vs-rest;
- reading order: nodule recall@k (a recommended slice inside the nodule's z
  range) next to ``recall@k.chance``, what a random order of the same
  slices gives, and ``located@k`` (the recommended finding itself lies on the
  nodule);
- studies: ROC-AUC for any nodule and for malignancy, per aggregator.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.errors import ConfigError, FeatureError
from lungslice.lidc.labels import LabelRule, apply_rule, read_labels, rule_from_provenance
from lungslice.model.cv import patient_folds, patient_strata
from lungslice.model.findings import FINDING_AGGREGATORS, FindingsConfig, study_findings
from lungslice.model.froc import (
    CPM_FP_RATES,
    cpm_from_curve,
    froc_curve,
    plot_froc,
    recall_at_k_chance,
)
from lungslice.model.metrics import (
    DEFAULT_KS,
    EvalTables,
    binary_auc,
    nodule_hits,
    recall_at_k,
)
from lungslice.progress import ProgressCallback, report

__all__ = [
    "CPM_RATES",
    "CandidateSet",
    "build_candidate_set",
    "candidate_figures",
    "cross_validate_candidates",
    "detector_probabilities",
    "findings_tables",
]

log = logging.getLogger(__name__)

#: LUNA16's false-positive rates per scan.
CPM_RATES = CPM_FP_RATES


@dataclass(frozen=True, eq=False)
class CandidateSet:
    """Labelled candidates of a cohort with their features and slices.

    Attributes
    ----------
    X : numpy.ndarray
        ``(n_candidates, d)`` float32 candidate features.
    candidates : pandas.DataFrame
        Candidate tables with ``nodule_id``, ``distance_mm`` and ``label_code``
        (0 non-nodule, 1 benign, 2 malignant, -1 on an excluded nodule).
    slices : pandas.DataFrame
        Resampled slices of the series with ``label_code`` (labelled slices only;
        excluded slices dropped) and ``lung``.
    nodules : pandas.DataFrame
        Counted nodules of the series: ``nodule_id``, ``patient_id``,
        ``series_uid``, ``z_min``, ``z_max``, ``label``, ``code`` and centres.
    rule : LabelRule
    config : dict
        The candidate cache's ``config.json``.
    studies : pandas.DataFrame
        One row per series: ``series_uid``, ``patient_id``, ``descriptor`` (the
        domain guard's study statistics).
    """

    X: np.ndarray
    candidates: pd.DataFrame
    slices: pd.DataFrame
    nodules: pd.DataFrame
    rule: LabelRule
    config: dict[str, Any] = field(default_factory=dict)
    studies: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def n_measurements(self) -> int:
        """Trailing columns of ``X`` that are the detector's measurements (0 for older caches)."""
        from lungslice.candidates.measures import MEASUREMENT_FEATURES

        on = bool(self.config.get("config", {}).get("measurements", False))
        return len(MEASUREMENT_FEATURES) if on else 0

    def feature_view(self, view: str) -> CandidateSet:
        """The same candidates with a subset of the feature columns (for the ablation).

        Parameters
        ----------
        view : {"all", "cnn", "measurements"}
            ``cnn``: the pretrained features only (the measurements dropped);
            ``measurements``: the detector's measurements only.

        Raises
        ------
        ConfigError
            For another view, or ``cnn``/``measurements`` on a cache without measurements.
        """
        import dataclasses

        if view == "all":
            return self
        if view not in ("cnn", "measurements"):
            raise ConfigError(
                f"CandidateSet.feature_view: expected 'all', 'cnn' or 'measurements', got {view!r}"
            )
        k = self.n_measurements
        if k == 0:
            raise ConfigError(
                f"CandidateSet.feature_view({view!r}): the candidate cache has no measurement "
                "columns. Fix: extract with CandidateConfig(measurements=True)."
            )
        inner = dict(self.config.get("config", {}))
        if view == "cnn":
            inner["measurements"] = False
            X = self.X[:, : self.X.shape[1] - k]
        else:
            X = self.X[:, self.X.shape[1] - k :]
        return dataclasses.replace(self, X=X, config={**self.config, "config": inner})

    @property
    def groups(self) -> np.ndarray:
        """Patient of each candidate row."""
        return self.candidates["patient_id"].astype(str).to_numpy()

    @property
    def y(self) -> np.ndarray:
        """Label code of each candidate row."""
        return self.candidates["label_code"].to_numpy(dtype=np.int64)

    def subset(self, patients: set[str]) -> CandidateSet:
        """The rows of these patients only."""
        keep = self.candidates["patient_id"].astype(str).isin(patients).to_numpy()
        return CandidateSet(
            X=self.X[keep],
            candidates=self.candidates[keep].reset_index(drop=True),
            slices=self.slices[self.slices["patient_id"].astype(str).isin(patients)].reset_index(
                drop=True
            ),
            nodules=self.nodules[self.nodules["patient_id"].astype(str).isin(patients)].reset_index(
                drop=True
            ),
            rule=self.rule,
            config=self.config,
            studies=self.studies[self.studies["patient_id"].astype(str).isin(patients)].reset_index(
                drop=True
            )
            if len(self.studies)
            else self.studies,
        )

    def summary(self) -> dict[str, Any]:
        """Counts for reports."""
        y = self.y
        series = self.slices["series_uid"].nunique()
        hit = set(self.candidates.loc[y > 0, "nodule_id"].dropna())
        return {
            "patients": int(self.slices["patient_id"].nunique()),
            "series": int(series),
            "slices": len(self.slices),
            "candidates": len(y),
            "candidates_per_scan": round(len(y) / max(series, 1), 1),
            "candidates_per_class": {
                "non-nodule": int((y == 0).sum()),
                "benign": int((y == 1).sum()),
                "malignant": int((y == 2).sum()),
                "excluded": int((y == -1).sum()),
            },
            "nodules": len(self.nodules),
            "nodules_with_a_candidate": len(hit & set(self.nodules["nodule_id"])),
            "feature_dim": int(self.X.shape[1]) if self.X.ndim == 2 else 0,
            "label_rule": self.rule.name,
        }


def resolve_candidates_dir(path: str | Path, key: str | None = None) -> tuple[Path, str]:
    """``(work_dir, key)`` from a work folder or a ``candidates/<key>`` folder."""
    p = Path(path)
    if (p / "config.json").is_file() and p.parent.name == "candidates":
        return p.parent.parent, p.name
    root = p / "candidates"
    keys = sorted(d.name for d in root.glob("*") if (d / "config.json").is_file())
    if key is not None:
        if key not in keys:
            raise FeatureError(
                f"{root} has no candidate cache {key}; keys present: {', '.join(keys) or 'none'}."
            )
        return p, key
    if len(keys) != 1:
        raise FeatureError(
            f"{p}: expected a work folder with exactly one candidate cache under candidates/, "
            f"found {len(keys)} ({', '.join(keys) or 'none'}). Fix: pass WORK/candidates/<key>."
        )
    return p, keys[0]


def build_candidate_set(
    work: str | Path,
    labels_dir: str | Path,
    rule: LabelRule | None = None,
    *,
    key: str | None = None,
) -> CandidateSet:
    """Load a candidate cache and label its candidates and slices.

    Parameters
    ----------
    work : path
        A work folder with one candidate cache (or ``key``), or ``WORK/candidates/<key>``.
    labels_dir : path
        Output of ``lungslice labels`` (its nodule table has the nodule centres).
    rule : LabelRule, optional
        Defaults to the rule the labels were written with.
    key : str, optional

    Returns
    -------
    CandidateSet
    """
    import json

    from lungslice.candidates.labels import match_candidates
    from lungslice.features.candidates import load_candidates
    from lungslice.model.dataset import join_labels

    work_dir, key = resolve_candidates_dir(work, key)
    X, cands, slices, studies = load_candidates(work_dir, key)
    config_path = work_dir / "candidates" / key / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    labels = read_labels(labels_dir)
    rule = rule or rule_from_provenance(labels.provenance)
    ts = join_labels(
        np.zeros((len(slices), 0), dtype=np.float32),
        slices,
        labels.slices,
        labels.nodules,
        rule,
        feature_config=config,
    )
    _, nod = apply_rule(labels.slices, labels.nodules, rule)
    centres = [c for c in nod.columns if c.startswith("centroid_") or c in ("radius_mm",)]
    centres += ["pixel_spacing_mm"] if "pixel_spacing_mm" in nod.columns else []
    nodules = ts.nodules.merge(nod[["nodule_id", *centres]], on="nodule_id", how="left")
    # every rule-labelled nodule of the series (excluded ones too) for matching
    matchable = nod[nod["series_uid"].isin(set(slices["series_uid"]))].copy()
    matchable["code"] = matchable["label"].map({"benign": 1, "malignant": 2}).fillna(-1)
    matchable.loc[~matchable["counted"], "code"] = -1
    parts = []
    for uid, rows in cands.groupby("series_uid", sort=False).indices.items():
        part = cands.iloc[rows].reset_index(drop=True)
        s = slices[slices["series_uid"] == uid].sort_values("slice_index")
        matched = match_candidates(
            part,
            matchable[matchable["series_uid"] == uid],
            z_positions=s["z_mm"].to_numpy(dtype=np.float64),
            pixel_spacing=(
                float(part["row_spacing_mm"].iloc[0]) if len(part) else 1.0,
                float(part["col_spacing_mm"].iloc[0]) if len(part) else 1.0,
            ),
        )
        parts.append(matched)
    table = pd.concat(parts, ignore_index=True) if parts else cands.assign(label_code=0)
    series_kept = set(ts.slices["series_uid"])
    keep = table["series_uid"].isin(series_kept).to_numpy()
    return CandidateSet(
        X=X[keep],
        candidates=table[keep].reset_index(drop=True),
        slices=ts.slices,
        nodules=nodules,
        rule=rule,
        config=config,
        studies=studies[studies["series_uid"].isin(series_kept)].reset_index(drop=True),
    )


def detector_probabilities(candidates: pd.DataFrame) -> np.ndarray:
    """The detector score alone as p(nodule) (rank-preserving), for the ablation."""
    s = candidates["score"].to_numpy(dtype=np.float64)
    if s.size == 0:
        return np.zeros((0, 3))
    lo, hi = np.min(s), np.max(s)
    p = (s - lo) / (hi - lo) if hi > lo else np.full_like(s, 0.5)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.column_stack([1.0 - p, p / 2.0, p / 2.0])


def findings_tables(
    cs: CandidateSet,
    probs: np.ndarray,
    config: FindingsConfig = FindingsConfig(),
    ks: Sequence[int] = DEFAULT_KS,
) -> EvalTables:
    """Slices, nodules and studies tables of candidate probabilities (one row per patient part).

    Parameters
    ----------
    cs : CandidateSet
    probs : numpy.ndarray
        ``(n_candidates, 3)`` probabilities of ``cs.candidates`` (e.g. out-of-fold).
    config : FindingsConfig
    ks : sequence of int
        The k of the chance columns ``chance@k`` of the nodule table.

    Returns
    -------
    EvalTables
        ``slices``: patient_id, y, p0, p1, p2, score, lung. ``nodules``: patient_id,
        label, hit_rank, best_score, located_rank, detect_score, chance@k.
        ``studies``: patient_id, has_any, has_malignant, p_* per aggregator and
        ``fp_scores`` (the scores of findings on no nodule, for FROC).
    """
    srows, nrows, strows = [], [], []
    cand_by = cs.candidates.groupby("series_uid", sort=False).indices
    nod_by = cs.nodules.groupby("series_uid", sort=False).indices
    for uid, rows in cs.slices.groupby("series_uid", sort=False).indices.items():
        sl = cs.slices.iloc[rows].sort_values("slice_index").reset_index(drop=True)
        pid = str(sl["patient_id"].iloc[0])
        ci = cand_by.get(uid, np.zeros(0, dtype=np.int64))
        c = cs.candidates.iloc[ci].reset_index(drop=True)
        p = probs[ci]
        full = _full_slices(sl)
        f = study_findings(c, p, full, config)
        # evaluate only labelled slices (excluded ones were dropped from sl)
        pos = np.searchsorted(full["slice_index"].to_numpy(), sl["slice_index"].to_numpy())
        sp = f.slice_probs[pos]
        srows.append(
            pd.DataFrame(
                {
                    "patient_id": pid,
                    "y": sl["label_code"].to_numpy(dtype=np.int64),
                    "p0": sp[:, 0],
                    "p1": sp[:, 1],
                    "p2": sp[:, 2],
                    "score": 1.0 - sp[:, 0],
                    "lung": sl["lung"].to_numpy(dtype=bool) if "lung" in sl else True,
                }
            )
        )
        # findings -> which nodule each lies on (through its head candidate)
        nid_of = dict(
            zip(c["candidate_id"], c.get("nodule_id", pd.Series(dtype=object)), strict=False)
        )
        code_of = dict(
            zip(c["candidate_id"], c.get("label_code", pd.Series(dtype=int)), strict=False)
        )
        fnod = [nid_of.get(i) for i in f.findings["candidate_id"]]
        fcode = np.array([code_of.get(i, 0) for i in f.findings["candidate_id"]], dtype=np.int64)
        fscore = f.findings["p_nodule"].to_numpy(dtype=np.float64)
        nods = cs.nodules.iloc[nod_by.get(uid, np.zeros(0, dtype=np.int64))]
        z = sl["z_mm"].to_numpy(dtype=np.float64)
        lung = sl["lung"].to_numpy(dtype=bool) if "lung" in sl else np.ones(len(sl), bool)
        ranking_full = f.ranking()
        # the reading order restricted to the evaluated slices
        keep_pos = {int(k): j for j, k in enumerate(sl["slice_index"].to_numpy())}
        ranking = np.array(
            [
                keep_pos[int(k)]
                for k in full["slice_index"].to_numpy()[ranking_full]
                if int(k) in keep_pos
            ],
            dtype=np.int64,
        )
        if len(nods):
            hit, best = nodule_hits(
                ranking,
                z,
                1.0 - sp[:, 0],
                nods["z_min"].to_numpy(dtype=np.float64),
                nods["z_max"].to_numpy(dtype=np.float64),
            )
            n_eval = int(lung.sum())
            za = nods["z_min"].to_numpy(dtype=np.float64)
            zb = nods["z_max"].to_numpy(dtype=np.float64)
            zlo, zhi = np.minimum(za, zb) - 0.5, np.maximum(za, zb) + 0.5
            ids = nods["nodule_id"].astype(str).tolist()
            codes = nods["code"].to_numpy(dtype=np.int64)
            for j in range(len(nods)):
                m = int(((z >= zlo[j]) & (z <= zhi[j]) & lung).sum())
                on = [r for r, nid in enumerate(fnod) if nid == ids[j]]
                first = f.findings.iloc[on[0]] if on else None
                row: dict[str, Any] = {
                    "patient_id": pid,
                    "series_uid": uid,
                    "nodule_id": ids[j],
                    "located_z_mm": float(first["z_mm"]) if first is not None else math.nan,
                    "located_row": float(first["row"]) if first is not None else math.nan,
                    "located_col": float(first["col"]) if first is not None else math.nan,
                    "label": int(codes[j]),
                    "hit_rank": float(hit[j]),
                    "best_score": float(best[j]),
                    "located_rank": float(on[0]) if on else math.inf,
                    "detect_score": float(fscore[on[0]]) if on else -math.inf,
                }
                for k in ks:
                    row[f"chance@{k}"] = float(recall_at_k_chance(n_eval, m, k))
                nrows.append(row)
        fp = fscore[(fcode == 0) & np.array([n is None or n != n for n in fnod], dtype=bool)]
        has_any = len(nods) > 0
        has_mal = bool((nods["code"] == 2).any()) if len(nods) else False
        st: dict[str, Any] = {
            "patient_id": pid,
            "series_uid": uid,
            "has_any": has_any,
            "has_malignant": has_mal,
            "fp_scores": fp,
            "n_findings": len(f.findings),
        }
        for name, v in f.scores.items():
            st[name] = v
        strows.append(st)
    nodule_cols = ["patient_id", "series_uid", "nodule_id", "label", "hit_rank", "best_score"]
    nodule_cols += ["located_rank", "detect_score", "located_z_mm", "located_row", "located_col"]
    nodule_cols += [f"chance@{k}" for k in ks]
    return EvalTables(
        slices=pd.concat(srows, ignore_index=True) if srows else pd.DataFrame(),
        nodules=pd.DataFrame(nrows, columns=nodule_cols),
        studies=pd.DataFrame(strows),
    )


def _full_slices(labelled: pd.DataFrame) -> pd.DataFrame:
    # Excluded slices are missing from the labelled table; findings need every slice
    # index up to the last one so that candidate slice indices stay valid.
    n = int(labelled["slice_index"].max()) + 1 if len(labelled) else 0
    full = pd.DataFrame({"slice_index": np.arange(n, dtype=np.int64)})
    z = np.interp(
        full["slice_index"].to_numpy(dtype=np.float64),
        labelled["slice_index"].to_numpy(dtype=np.float64),
        labelled["z_mm"].to_numpy(dtype=np.float64),
    )
    full["z_mm"] = z
    lung = np.zeros(n, dtype=bool)
    if "lung" in labelled:
        lung[labelled["slice_index"].to_numpy()] = labelled["lung"].to_numpy(dtype=bool)
    else:
        lung[labelled["slice_index"].to_numpy()] = True
    full["lung"] = lung
    return full


def froc_curve_of(tables: EvalTables) -> pd.DataFrame:
    """The FROC curve of the findings in :func:`findings_tables` output.

    Each counted nodule's first finding is a true positive at that finding's
    score (a nodule without one is a miss); every finding on no nodule is a
    false positive; findings on excluded nodules were left out when the tables
    were made. :func:`lungslice.model.froc.froc_curve` does the counting.
    """
    n, st = tables.nodules, tables.studies
    d = n["detect_score"].to_numpy(dtype=np.float64) if len(n) else np.zeros(0)
    ids = [f"n{i}" for i in range(len(d))]
    series = n["series_uid"].astype(str).tolist() if len(n) else []
    found = np.isfinite(d)
    rows = {
        "series_uid": [s for s, f in zip(series, found, strict=True) if f],
        "score": d[found].tolist(),
        "nodule_id": [i for i, f in zip(ids, found, strict=True) if f],
    }
    for uid, fp in zip(st["series_uid"].astype(str), st["fp_scores"], strict=True):
        fp = np.asarray(fp, dtype=np.float64).ravel()
        rows["series_uid"] += [uid] * fp.size
        rows["score"] += fp.tolist()
        rows["nodule_id"] += [None] * fp.size
    cands = pd.DataFrame(rows)
    cands["label_code"] = 0
    nodules = pd.DataFrame({"nodule_id": ids, "series_uid": series})
    return froc_curve(cands, nodules, n_scans=max(len(st), 1))


def candidate_figures(tables: EvalTables, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Every scalar figure of the candidate path (flat names, bootstrap-ready)."""
    s, n, st = tables.slices, tables.nodules, tables.studies
    out: dict[str, float] = {}
    if len(s):
        y = s["y"].to_numpy(dtype=np.int64)
        p0, p2 = s["p0"].to_numpy(dtype=np.float64), s["p2"].to_numpy(dtype=np.float64)
        out["slice.roc_auc.nodule"] = binary_auc(y > 0, 1.0 - p0)
        out["slice.roc_auc.malignant"] = binary_auc(y == 2, p2)
        out["slice.roc_auc.benign"] = binary_auc(y == 1, s["p1"].to_numpy(dtype=np.float64))
    label = n["label"].to_numpy(dtype=np.int64) if len(n) else np.zeros(0, dtype=np.int64)
    hit = n["hit_rank"].to_numpy(dtype=np.float64) if len(n) else np.zeros(0)
    loc = n["located_rank"].to_numpy(dtype=np.float64) if len(n) else np.zeros(0)
    for k in ks:
        out[f"nodule.recall@{k}.any"] = recall_at_k(hit[label >= 1], k)
        out[f"nodule.recall@{k}.malignant"] = recall_at_k(hit[label == 2], k)
        out[f"nodule.recall@{k}.chance"] = (
            float(n[f"chance@{k}"].mean()) if len(n) and f"chance@{k}" in n else float("nan")
        )
        out[f"nodule.located@{k}.any"] = recall_at_k(loc[label >= 1], k)
    if len(st):
        d = n["detect_score"].to_numpy(dtype=np.float64) if len(n) else np.zeros(0)
        points = cpm_from_curve(froc_curve_of(tables))
        for r in CPM_RATES:
            out[f"froc.sensitivity@{r:g}fp"] = float(points[f"sens@{r:g}"])
        out["froc.cpm"] = float(points["cpm"])
        out["froc.detected"] = float(np.mean(np.isfinite(d))) if d.size else float("nan")
        out["froc.findings_per_scan"] = float(st["n_findings"].mean())
        for method in FINDING_AGGREGATORS:
            for col, target, name in (
                (f"p_any_nodule.{method}", "has_any", "any_nodule"),
                (f"p_malignant.{method}", "has_malignant", "malignant"),
            ):
                if col in st:
                    out[f"study.roc_auc.{name}.{method}"] = binary_auc(
                        st[target].to_numpy(dtype=bool), st[col].to_numpy(dtype=np.float64)
                    )
        for col, target, name in (
            ("p_any_nodule", "has_any", "any_nodule"),
            ("p_malignant", "has_malignant", "malignant"),
        ):
            if col in st:
                out[f"study.roc_auc.{name}"] = binary_auc(
                    st[target].to_numpy(dtype=bool), st[col].to_numpy(dtype=np.float64)
                )
    return out


@dataclass(frozen=True, eq=False)
class CandidateCV:
    """Out-of-fold results of :func:`cross_validate_candidates`.

    Attributes
    ----------
    probs : numpy.ndarray
        ``(n_candidates, 3)`` out-of-fold probabilities.
    folds : list of tuple of str
        Test patients of each fold.
    params : list of dict
        The hyperparameters each fold chose.
    """

    probs: np.ndarray
    folds: list[tuple[str, ...]]
    params: list[dict[str, Any]]


def cross_validate_candidates(
    cs: CandidateSet,
    *,
    n_splits: int = 4,
    seed: int = 0,
    param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
    fit: Callable[..., Any] | None = None,
    progress: ProgressCallback | None = None,
) -> CandidateCV:
    """Out-of-fold candidate probabilities from patient-grouped folds.

    Each outer fold fits the classifier on the other patients' candidates
    (label -1 rows left out), choosing hyperparameters by ``GridSearchCV`` over
    inner patient-grouped folds when ``param_grid`` has more than one setting.

    Parameters
    ----------
    cs : CandidateSet
    n_splits : int
        Outer folds (patients are stratified: malignant, benign-only, none).
    seed : int
    param_grid : dict, optional
        Hyperparameter grid of :class:`~lungslice.model.candidate_head.CandidateClassifier`.
    fit : callable, optional
        ``fit(X, y, groups, param_grid=..., seed=..., n_passthrough=...) -> (estimator,
        record)`` (``n_passthrough``: :attr:`CandidateSet.n_measurements`);
        defaults to :func:`~lungslice.model.candidate_head.fit_candidate_classifier`.
    progress : ProgressCallback, optional

    Returns
    -------
    CandidateCV
    """
    from lungslice.model.candidate_head import fit_candidate_classifier

    fit = fit or fit_candidate_classifier
    sl = cs.slices
    pid = sl["patient_id"].astype(str).to_numpy()
    strata = patient_strata(pid, sl["label_code"].to_numpy(dtype=np.int64))
    folds = patient_folds(pid, strata, n_splits=n_splits, seed=seed)
    groups = cs.groups
    y = cs.y
    probs = np.zeros((len(y), 3), dtype=np.float64)
    chosen: list[dict[str, Any]] = []
    for k, fold in enumerate(folds):
        test = np.isin(groups, fold.test_patients)
        train = ~test & (y >= 0)
        if len(np.unique(y[train])) < 2:
            raise ConfigError(
                f"fold {k}: the training patients have candidates of one class only; "
                "expected nodules among them. Fix: add patients with nodules or lower n_splits."
            )
        est, record = fit(
            X=cs.X[train],
            y=y[train],
            groups=groups[train],
            param_grid=param_grid,
            seed=seed,
            n_passthrough=cs.n_measurements,
        )
        probs[test] = _proba3(est, cs.X[test])
        chosen.append(dict(record.get("best_params", {})) if isinstance(record, dict) else {})
        report(progress, k + 1, len(folds), f"fold {k + 1}/{len(folds)}")
    return CandidateCV(probs=probs, folds=[f.test_patients for f in folds], params=chosen)


def _proba3(est: Any, X: np.ndarray) -> np.ndarray:
    """``(n, 3)`` probabilities in class order 0, 1, 2 whatever classes the estimator saw."""
    p = est.predict_proba(X)
    out = np.zeros((len(X), 3), dtype=np.float64)
    for j, c in enumerate(np.asarray(est.classes_, dtype=np.int64)):
        out[:, int(c)] = p[:, j]
    return out


#: Figures shown in reports, in order, with their labels.
HEADLINE_FIGURES: tuple[tuple[str, str], ...] = (
    ("froc.cpm", "CPM (mean sensitivity at 1/8..8 FP/scan)"),
    ("froc.sensitivity@1fp", "sensitivity at 1 FP/scan"),
    ("froc.sensitivity@2fp", "sensitivity at 2 FP/scan"),
    ("froc.sensitivity@4fp", "sensitivity at 4 FP/scan"),
    ("froc.detected", "nodules with a finding (any score)"),
    ("slice.roc_auc.nodule", "slice ROC-AUC nodule vs none"),
    ("slice.roc_auc.malignant", "slice ROC-AUC malignant vs rest"),
    ("nodule.recall@1.any", "nodule recall@1"),
    ("nodule.recall@5.any", "nodule recall@5"),
    ("nodule.recall@5.chance", "  random order, recall@5"),
    ("nodule.recall@10.any", "nodule recall@10"),
    ("nodule.recall@10.chance", "  random order, recall@10"),
    ("nodule.located@5.any", "nodule located@5 (finding on the nodule)"),
    ("study.roc_auc.any_nodule", "study ROC-AUC (any nodule)"),
    ("study.roc_auc.malignant", "study ROC-AUC (malignant)"),
)


def figures_markdown(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """A markdown table: one column per variant, one row per headline figure."""
    from lungslice.model.metrics import format_figure

    names = list(rows)
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in HEADLINE_FIGURES:
        cells = [format_figure(rows[n].get(key)) for n in names]
        lines.append(f"| {label.strip()} (`{key}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_candidates(
    cs: CandidateSet,
    out_dir: str | Path,
    *,
    n_splits: int = 4,
    n_boot: int = 200,
    seed: int = 0,
    param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
    findings: FindingsConfig = FindingsConfig(),
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Cross-validate the candidate classifier and write ``metrics.json``, ``report.md``, FROC.

    Two variants side by side, on the same folds and candidates: the trained
    classifier on pretrained features, and the detector score alone.

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    import json

    from lungslice.model.metrics import bootstrap, format_figure, json_safe
    from lungslice.provenance import provenance

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cv = cross_validate_candidates(
        cs, n_splits=n_splits, seed=seed, param_grid=param_grid, progress=progress
    )
    variants = {
        "classifier": cv.probs,
        "detector score alone": detector_probabilities(cs.candidates),
    }
    rows: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, pd.DataFrame] = {}
    for name, probs in variants.items():
        tables = findings_tables(cs, probs, findings)
        rows[name] = bootstrap(tables, n_boot=n_boot, seed=seed, figures=candidate_figures)
        curves[name] = froc_curve_of(tables)
    plot_froc(curves, out / "froc.png", title=f"patient-grouped {n_splits}-fold CV")
    calibration = calibration_figures(cs, cv, out, findings=findings, n_boot=n_boot, seed=seed)
    record = provenance(
        findings,
        summary=cs.summary(),
        folds=[list(f) for f in cv.folds],
        params=cv.params,
        param_grid=_grid_record(param_grid),
        figures=rows,
        calibration=calibration,
        candidates=cs.config.get("config", {}),
    )
    (out / "metrics.json").write_text(
        json.dumps(json_safe(record), indent=1, default=str, allow_nan=False) + "\n"
    )
    s = cs.summary()
    md = [
        "# lungslice candidate evaluation",
        "",
        f"{s['patients']} patients, {s['series']} series, {s['slices']} labelled slices, "
        f"{s['candidates']} candidates ({s['candidates_per_scan']} per scan; "
        f"{s['nodules_with_a_candidate']} of {s['nodules']} counted nodules have one), "
        f"label rule {s['label_rule']}. Patient-grouped {n_splits}-fold CV; 95 % CI by "
        f"bootstrap over patients ({n_boot} replicates). `random order` is what a random "
        "reading order of the same lung slices gives.",
        "",
        figures_markdown(rows),
        "",
        "![FROC](froc.png)",
        "",
        "## Calibration (expected calibration error, out of fold, before -> after)",
        "",
        "| what | n | ECE before | ECE after | saturated before | saturated after |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in calibration.items():
        if not isinstance(c, dict) or "ece_before" not in c:
            continue
        md.append(
            f"| {name} | {c['n']} | {format_figure(c['ece_before'])} | "
            f"{format_figure(c['ece_after'])} | {c['saturated_before']:.3f} | "
            f"{c['saturated_after']:.3f} |"
        )
    md += ["", *(f"![{k}]({v})" for k, v in calibration.get("plots", {}).items()), ""]
    (out / "report.md").write_text("\n".join(md))
    return record


def _grid_record(grid: Any) -> Any:
    """A JSON-safe copy of a GridSearchCV grid (a dict or a list of dicts)."""
    if grid is None:
        return {}
    if isinstance(grid, Mapping):
        return {str(k): list(v) for k, v in grid.items()}
    return [_grid_record(g) for g in grid]


def fold_of_rows(groups: np.ndarray, folds: Sequence[Sequence[str]]) -> np.ndarray:
    """The outer fold index of each row, from its patient (-1 when in no fold)."""
    where = {p: k for k, test in enumerate(folds) for p in test}
    return np.array([where.get(str(g), -1) for g in groups], dtype=np.int64)


def calibration_figures(
    cs: CandidateSet,
    cv: CandidateCV,
    out_dir: str | Path | None = None,
    *,
    findings: FindingsConfig = FindingsConfig(),
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Calibration before and after, on the same out-of-fold predictions.

    Candidate probabilities are calibrated by
    :data:`~lungslice.model.calibration.CANDIDATE_CALIBRATOR` (temperature and
    class bias); study scores are those of the calibrated candidates,
    Platt-scaled, as the bundle does. Each fold is calibrated by calibrators
    fitted on the other folds (:func:`lungslice.model.calibration.cross_calibrate`),
    so "after" is as held-out as "before" (the uncalibrated pipeline).
    Figures: expected calibration error of p(nodule) per candidate and of
    p(any nodule) / p(malignant) per study, with 95 % CIs over patients, and
    the rate of saturated outputs (p < 0.001 or > 0.999).

    Returns
    -------
    dict
        ``{"candidates": {...}, "studies.any_nodule": {...}, "studies.malignant": {...}}``,
        each with ``ece_before``, ``ece_after`` (figure dicts), ``saturated_before``,
        ``saturated_after``; plus ``plots`` (file names) when ``out_dir`` is given.
    """
    from lungslice.model.calibration import (
        CANDIDATE_CALIBRATOR,
        cross_calibrate,
        plot_reliability,
    )

    out: dict[str, Any] = {}
    y, groups = cs.y, cs.groups
    keep = y >= 0
    fold = fold_of_rows(groups, cv.folds)
    p = cv.probs[keep]
    p_cal = cross_calibrate(p, y[keep], fold[keep], CANDIDATE_CALIBRATOR)
    yb = (y[keep] > 0).astype(np.int64)
    before, after = p[:, 1] + p[:, 2], p_cal[:, 1] + p_cal[:, 2]
    out["candidates"] = _ece_pair(yb, before, after, groups[keep], n_boot, seed)
    plots = {}
    if out_dir is not None:
        name = "reliability_candidates.png"
        plot_reliability(yb, before, after, Path(out_dir) / name, title="candidates: p(nodule)")
        plots["candidates"] = name
    studies = findings_tables(cs, cv.probs, findings).studies
    probs_cal = cv.probs.copy()
    probs_cal[keep] = p_cal
    studies_cal = findings_tables(cs, probs_cal, findings).studies
    sfold = fold_of_rows(studies["patient_id"].to_numpy(), cv.folds)
    for col, target, name in (
        ("p_any_nodule", "has_any", "any_nodule"),
        ("p_malignant", "has_malignant", "malignant"),
    ):
        ys = studies[target].to_numpy(dtype=np.int64)
        ps = studies[col].to_numpy(dtype=np.float64)
        ps_cand = studies_cal[col].to_numpy(dtype=np.float64)
        if len(np.unique(ys)) < 2:
            out[f"studies.{name}"] = {"skipped": "one class only among the studies"}
            continue
        try:
            ps_cal = cross_calibrate(ps_cand, ys, sfold, "platt")
        except ConfigError as err:  # too few studies in a fold to fit on the others
            out[f"studies.{name}"] = {"skipped": str(err)}
            continue
        out[f"studies.{name}"] = _ece_pair(
            ys, ps, ps_cal, studies["patient_id"].to_numpy(), n_boot, seed
        )
        if out_dir is not None:
            fname = f"reliability_studies_{name}.png"
            plot_reliability(ys, ps, ps_cal, Path(out_dir) / fname, title=f"studies: {col}")
            plots[f"studies.{name}"] = fname
    if plots:
        out["plots"] = plots
    out["saturated_rule"] = "p < 0.001 or p > 0.999"
    return out


def _ece_pair(
    y: np.ndarray, before: np.ndarray, after: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    from lungslice.model.calibration import ece_bootstrap, saturation_rate

    return {
        "ece_before": ece_bootstrap(y, before, groups, n_boot=n_boot, seed=seed),
        "ece_after": ece_bootstrap(y, after, groups, n_boot=n_boot, seed=seed),
        "saturated_before": saturation_rate(before),
        "saturated_after": saturation_rate(after),
        "n": len(y),
    }
