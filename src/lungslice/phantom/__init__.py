"""The LIDC-IDRI phantom: synthetic chest CT rendered from the real annotation geometry.

``synthesize(out_dir, patient_ids, config)`` writes LIDC-layout DICOM series;
``render_scan(scan, config)`` returns the HU volume in memory;
``select_patients(scans, n, seed)`` picks a stratified set of patients.
"""

from __future__ import annotations

from lungslice.phantom.config import KERNELS, PhantomConfig
from lungslice.phantom.render import RenderedScan, render, render_scan
from lungslice.phantom.select import select_patients
from lungslice.phantom.writer import PhantomSeries, synthesize

__all__ = [
    "KERNELS",
    "PhantomConfig",
    "PhantomSeries",
    "RenderedScan",
    "render",
    "render_scan",
    "select_patients",
    "synthesize",
]
