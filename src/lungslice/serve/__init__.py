"""lungslice next to a PACS: a service that follows Orthanc and stores findings back as DICOM."""
