"""Helpers shared by the test folders: import them as ``from tests.helpers import ...``.

Fixtures stay in the ``conftest.py`` files; plain functions and classes that
tests call live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.features.cache import FeatureCache
from lungslice.features.config import FeatureConfig
from lungslice.lidc.labels import LabelRule, write_labels
from lungslice.model.dataset import TrainingSet


@dataclass
class Synthetic:
    X: np.ndarray
    y: np.ndarray
    slices: pd.DataFrame
    nodules: pd.DataFrame


def make_synthetic(
    n_patients: int = 12, n_slices: int = 40, d: int = 16, seed: int = 0
) -> Synthetic:
    """Patients with one series each; some carry a benign or malignant nodule run."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.5, size=(3, d))
    xs, ys, rows, nods = [], [], [], []
    for p in range(n_patients):
        pid = f"LIDC-IDRI-{p:04d}"
        series = f"1.2.3.{p}"
        y = np.zeros(n_slices, dtype=np.int64)
        kind = p % 3  # 0 none, 1 benign, 2 malignant
        if kind:
            start = int(rng.integers(5, n_slices - 12))
            length = int(rng.integers(4, 8))
            y[start : start + length] = kind
            nods.append(
                {
                    "nodule_id": f"{pid}-n1",
                    "patient_id": pid,
                    "series_uid": series,
                    "z_min": float(start),
                    "z_max": float(start + length - 1),
                    "label": kind,
                }
            )
        xs.append(centres[y] + rng.normal(0.0, 1.0, size=(n_slices, d)))
        ys.append(y)
        rows.append(
            pd.DataFrame(
                {
                    "series_uid": series,
                    "patient_id": pid,
                    "study_uid": f"9.{p}",
                    "slice_index": np.arange(n_slices),
                    "z_mm": np.arange(n_slices, dtype=np.float64),
                    "sop_instance_uid": [f"{series}.{i}" for i in range(n_slices)],
                    "instance_number": np.arange(n_slices) + 1,
                }
            )
        )
    return Synthetic(
        X=np.concatenate(xs).astype(np.float32),
        y=np.concatenate(ys),
        slices=pd.concat(rows, ignore_index=True),
        nodules=pd.DataFrame(nods),
    )


def write_cache(work: Path, syn: Synthetic, key: str, X: np.ndarray, record: dict) -> None:
    """WORK/features/<key> in the layout of lungslice.features.cache (1 mm source = resampled)."""
    cache = FeatureCache(work, key)
    cache.prepare()
    manifest = []
    for uid, rows in syn.slices.groupby("series_uid", sort=False).indices.items():
        part = syn.slices.iloc[rows].reset_index(drop=True)
        n = len(part)
        i = np.arange(n)
        z = part["z_mm"].to_numpy()
        part = part.assign(
            source_lower=i,
            source_upper=np.minimum(i + 1, n - 1),
            weight_lower=1.0,
            weight_upper=0.0,
            source_z_lower=z,
            source_z_upper=z[np.minimum(i + 1, n - 1)],
            nearest_source=i,
        )
        cache.write_series(uid, X[rows].astype(np.float16), part)
        manifest.append({"series_uid": uid, "patient_id": part["patient_id"][0], "status": "done"})
    cache.write_manifest(manifest)
    cache.write_config({"key": key, **record})


def write_labels_dir(path: Path, syn: Synthetic) -> None:
    """A labels folder (lidc.labels layout); odd-numbered nodules have 2 readers, others 4."""
    label_slices = syn.slices[["patient_id", "study_uid", "series_uid", "slice_index", "z_mm"]]
    nodules = syn.nodules.assign(
        study_uid="x",
        n_readers=np.where(np.arange(len(syn.nodules)) % 2 == 0, 4, 2),
        mean_malignancy=np.where(syn.nodules["label"] == 2, 4.0, 2.0),
        median_malignancy=np.where(syn.nodules["label"] == 2, 4.0, 2.0),
        slice_indices=[
            list(range(int(a), int(b) + 1))
            for a, b in zip(syn.nodules["z_min"], syn.nodules["z_max"], strict=True)
        ],
    ).drop(columns=["label"])
    write_labels(path, label_slices.assign(scan_id=1), nodules, rule=LabelRule())


def training_set(synthetic: Synthetic, rule: LabelRule, drop_every: int = 0) -> TrainingSet:
    """A TrainingSet of ``synthetic`` under ``rule`` (every ``drop_every``-th row dropped)."""
    keep = np.ones(synthetic.y.size, dtype=bool)
    if drop_every:
        keep[::drop_every] = False
    codes = synthetic.nodules["label"].to_numpy()
    nodules = synthetic.nodules.assign(
        label=np.where(codes == 2, "malignant", "benign"), code=codes
    )
    # a nodule beyond the series' last slice (as in a z-cropped series): not scored
    outside = nodules.iloc[:1].assign(nodule_id="outside", z_min=500.0, z_max=505.0)
    nodules = pd.concat([nodules, outside], ignore_index=True)
    slices = synthetic.slices[keep].reset_index(drop=True).assign(label_code=synthetic.y[keep])
    return TrainingSet(
        X=synthetic.X[keep],
        y=synthetic.y[keep],
        groups=slices["patient_id"].to_numpy(),
        slices=slices,
        nodules=nodules,
        rejected=pd.DataFrame({"series_uid": [], "slice_index": [], "reason": []}),
        rule=rule,
        feature_config={"key": "k", "backbone": {"name": "synthetic", "layers": ["x"]}},
    )


def torchvision_resnet18_file(path: Path, seed: int = 0) -> dict[str, Any]:
    """Save the state dict of a randomly initialised torchvision ResNet-18 to ``path``."""
    import torch
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = resnet18().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return dict(state)


@dataclass(frozen=True)
class Pipeline:
    """The trained whole-slice pipeline the predict, batch and serve tests share."""

    root: Path
    data: Path
    model: Path
    nodules: pd.DataFrame
    config: FeatureConfig

    def study(self, patient_id: str) -> Path:
        return self.data / "LIDC-IDRI" / patient_id


#: One malignant nodule (four readers), the mixed case, and a scan with no nodule.
PIPELINE_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0078", "LIDC-IDRI-0937")


def build_pipeline(root: Path) -> Pipeline:
    """Phantom -> labels -> whole-slice features -> bundle for :data:`PIPELINE_PATIENTS`.

    Small inputs (96 px, 256² phantoms, 8 mm around the nodules) keep it quick;
    the pipeline is the same at full size. ``tests/conftest.py`` builds it once
    per session (fixture ``pipeline``); tests that add files copy ``data`` first.
    """
    from lungslice.features.extract import extract_dataset
    from lungslice.features.inputs import InputConfig
    from lungslice.lidc.db import read_database
    from lungslice.lidc.labels import label_scans
    from lungslice.model.dataset import build_training_set
    from lungslice.model.evaluate import EvaluateConfig
    from lungslice.model.train import train_bundle
    from lungslice.phantom import PhantomConfig, synthesize

    scans = read_database(patient_ids=PIPELINE_PATIENTS)
    synthesize(
        root / "data",
        PIPELINE_PATIENTS,
        PhantomConfig(seed=1, matrix=256, z_margin_mm=8.0),
        scans=scans,
    )
    rule = LabelRule()
    slices, nodules = label_scans(scans, rule=rule)
    write_labels(root / "labels", slices, nodules, rule=rule, source="pylidc")
    config = FeatureConfig(inputs=InputConfig(size=96), batch_size=16)
    extract_dataset(root / "data", root / "work", config)
    ts = build_training_set(root / "work", root / "labels")
    train_bundle(ts, root / "model", aggregator="noisy_or", config=EvaluateConfig(n_splits=0))
    return Pipeline(root, root / "data", root / "model", nodules, config)


# --- a tiny synthetic chest for the lung field and the candidate detector ---

SPACING = (2.0, 2.0, 2.0)


@dataclass
class Chest:
    hu: np.ndarray
    lungs: np.ndarray  # true lung ellipsoids (before vessels and nodules)
    body: np.ndarray
    nodules: list[tuple[float, float, float, float]]  # z, row, col (voxels), radius (mm)
    vessels: np.ndarray  # bool: vessel voxels


def ball(shape: tuple[int, int, int], centre: tuple[float, ...], radius_vox: float) -> np.ndarray:
    z, r, c = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2 <= radius_vox**2


def tube(
    shape: tuple[int, int, int], p0: np.ndarray, p1: np.ndarray, radius_vox: float
) -> np.ndarray:
    z, r, c = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    pts = np.stack([z, r, c], axis=-1).astype(np.float64)
    d = p1 - p0
    t = np.clip(((pts - p0) @ d) / (d @ d), 0.0, 1.0)
    closest = p0 + t[..., None] * d
    return ((pts - closest) ** 2).sum(axis=-1) <= radius_vox**2


def synthetic_chest(seed: int = 0, noise_hu: float = 15.0) -> Chest:
    """Body ellipse (40 HU) in air, two lungs (-850 HU), vessels (+40 HU), two nodules."""
    shape = (40, 96, 96)
    z, r, c = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((r - 48) / 40.0) ** 2 + ((c - 48) / 44.0) ** 2 <= 1.0
    body = np.broadcast_to(body, shape).copy()
    lungs = np.zeros(shape, dtype=bool)
    for cc in (28, 68):  # lung centres (columns); 24 mm of mediastinum between them
        lungs |= ((z - 20) / 15.0) ** 2 + ((r - 46) / 26.0) ** 2 + ((c - cc) / 14.0) ** 2 <= 1.0
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[lungs] = -850.0
    # vessels: tubes crossing the whole lung (they continue into the body)
    vessels = np.zeros(shape, dtype=bool)
    for p0, p1 in (
        ((0, 40, 26), (39, 52, 30)),
        ((0, 30, 66), (39, 60, 72)),
        ((20, 10, 20), (20, 90, 36)),
    ):
        vessels |= tube(shape, np.array(p0, float), np.array(p1, float), 1.0)
    hu[vessels & lungs] = 40.0
    # nodules: one in the middle of the right lung, one on the left lung's lateral wall
    nodules = [(18.0, 60.0, 30.0, 4.0), (22.0, 46.0, 80.0, 5.0)]
    for zc, rc, cc, rad in nodules:
        hu[ball(shape, (zc, rc, cc), rad / SPACING[0])] = 20.0
    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    return Chest(hu=hu, lungs=lungs, body=body, nodules=nodules, vessels=vessels)


#: ../shared/realct beside the repository (tests that use it skip when it is absent).
REALCT = Path(__file__).resolve().parents[1] / ".." / "shared" / "realct"
REALCT_NAMES = ("chest-ct-gemed-lung-2p5mm", "chest-ct-ge-pe-0p8mm", "chest-ct-ge-petct-4mm")


def unpack_realct(name: str, dest: Path) -> Path:
    """Unpack ``REALCT/<name>.tar.xz`` into ``dest``; the series folder ``dest/<name>``."""
    import tarfile

    with tarfile.open(REALCT / f"{name}.tar.xz") as tar:
        tar.extractall(dest, filter="data")
    return dest / name
