"""Evaluation plots as PNG files (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

__all__ = ["plot_calibration", "plot_pr", "plot_recall_at_k", "plot_roc"]

_CLASSES = ("non-nodule", "benign", "malignant")
_COLOURS = ("tab:gray", "tab:blue", "tab:red")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(y: np.ndarray, probs: np.ndarray, path: str | Path, title: str = "") -> Path:
    """One-vs-rest ROC curve per class."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for c, (name, colour) in enumerate(zip(_CLASSES, _COLOURS, strict=True)):
        pos = y == c
        if pos.any() and not pos.all():
            fpr, tpr, _ = roc_curve(pos, probs[:, c])
            ax.plot(fpr, tpr, color=colour, label=name)
    ax.plot([0, 1], [0, 1], color="black", lw=0.5, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title or "ROC")
    ax.legend(loc="lower right")
    return _save(fig, Path(path))


def plot_pr(y: np.ndarray, probs: np.ndarray, path: str | Path, title: str = "") -> Path:
    """One-vs-rest precision-recall curve per class, with each class's prevalence."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for c, (name, colour) in enumerate(zip(_CLASSES, _COLOURS, strict=True)):
        pos = y == c
        if pos.any() and not pos.all():
            prec, rec, _ = precision_recall_curve(pos, probs[:, c])
            ax.plot(rec, prec, color=colour, label=f"{name} (prevalence {pos.mean():.3f})")
    ax.set(xlabel="recall", ylabel="precision", title=title or "Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, Path(path))


def plot_calibration(
    y: np.ndarray, probs: np.ndarray, path: str | Path, n_bins: int = 10, title: str = ""
) -> Path:
    """Reliability diagram: observed frequency vs mean predicted probability, per class."""
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, n_bins + 1)
    for c, (name, colour) in enumerate(zip(_CLASSES, _COLOURS, strict=True)):
        p = probs[:, c]
        b = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
        counts = np.bincount(b, minlength=n_bins)
        used = counts > 0
        mean_p = np.bincount(b, weights=p, minlength=n_bins)[used] / counts[used]
        freq = np.bincount(b, weights=(y == c).astype(float), minlength=n_bins)[used] / counts[used]
        ax.plot(mean_p, freq, marker="o", color=colour, label=name)
    ax.plot([0, 1], [0, 1], color="black", lw=0.5, ls=":")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed frequency",
        title=title or "Calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    return _save(fig, Path(path))


def plot_recall_at_k(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float, float, float]]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Nodule recall@k with 95 % CIs.

    Parameters
    ----------
    curves : mapping
        ``{series_name: {"malignant": [(k, value, lo, hi), ...], "benign": [...]}}``,
        e.g. one series per label rule.
    path : path
        Output PNG.
    title : str
        Figure title.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, kind in zip(axes, ("malignant", "benign"), strict=True):
        for offset, (name, by_kind) in enumerate(curves.items()):
            pts = np.asarray(by_kind.get(kind, []), dtype=float).reshape(-1, 4)
            if not len(pts):
                continue
            x = pts[:, 0] * (1 + 0.03 * offset)  # dodge overlapping error bars
            err = np.abs(np.stack([pts[:, 1] - pts[:, 2], pts[:, 3] - pts[:, 1]]))
            ax.errorbar(x, pts[:, 1], yerr=np.nan_to_num(err), marker="o", capsize=3, label=name)
        ax.set(xscale="log", xlabel="k (slices read)", title=f"{kind} nodules", ylim=(0, 1.02))
        ax.set_xticks([1, 3, 5, 10], labels=["1", "3", "5", "10"])
    axes[0].set_ylabel("recall@k")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title or "Nodules found among the top-k recommended slices")
    return _save(fig, Path(path))
