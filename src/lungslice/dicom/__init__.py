"""DICOM ingestion: index folder trees, load CT series as HU volumes, resample."""
