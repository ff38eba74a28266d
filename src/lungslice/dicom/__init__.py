"""DICOM ingestion: index folder trees, load CT series as HU volumes, resample.

Modules, in data-flow order (each imports only those above it):

- ``walk`` - every file under a root; reason categories.
- ``rawheader`` - a fast reader of the few header elements needed (pydicom fallback).
- ``header`` - :class:`~lungslice.dicom.header.SliceHeader`: one file's facts.
- ``geometry`` - :class:`~lungslice.dicom.geometry.LoadConfig` and
  :func:`~lungslice.dicom.geometry.plan_stack`: every check before stacking.
- ``discover`` - :func:`~lungslice.dicom.discover.index_tree` ->
  :class:`~lungslice.dicom.discover.DicomIndex` (files.parquet, series.parquet).
- ``volume`` - :func:`~lungslice.dicom.volume.load_series` ->
  :class:`~lungslice.dicom.volume.CTVolume` (HU, geometry, identity).
- ``batch`` - :func:`~lungslice.dicom.batch.iter_series`: many series on all cores.
- ``resample`` - :func:`~lungslice.dicom.resample.resample` ->
  :class:`~lungslice.dicom.resample.ResampledVolume` (1 mm slices with provenance).
- ``describe`` - facts and previews for ``lungslice show``.

Nothing is imported here, so worker processes load only what they use.
"""
