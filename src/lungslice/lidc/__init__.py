"""LIDC-IDRI annotations: readers' contours, nodule clustering and slice labels."""
