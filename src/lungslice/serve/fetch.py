"""How the service reads a study from the server: Orthanc's REST API or DICOMweb.

The change feed gives Orthanc study identifiers; everything after that, the
list of the study's series and the download of its CT series, goes through
one of two fetchers with the same interface:

- :class:`RestFetcher` (``--fetch rest``, the default): ``/studies/{id}``,
  ``/series/{id}`` and ``/series/{id}/archive`` (one ZIP per series).
- :class:`DicomwebFetcher` (``--fetch dicomweb``): QIDO-RS
  ``/studies/{uid}/series`` and WADO-RS ``/studies/{uid}/series/{uid}`` (one
  multipart answer per series, in the stored transfer syntax). Nothing in it
  is Orthanc's own API, so it reads from any DICOMweb server's root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from lungslice.serve.orthanc import OrthancClient

__all__ = [
    "FETCHERS",
    "DicomwebFetcher",
    "RestFetcher",
    "SeriesEntry",
    "StudyFetcher",
    "make_fetcher",
]

#: The names ``--fetch`` accepts.
FETCHERS = ("rest", "dicomweb")


@dataclass(frozen=True)
class SeriesEntry:
    """One series of a study, as the server lists it.

    Attributes
    ----------
    series_uid : str
        SeriesInstanceUID.
    modality, description : str
        Modality and SeriesDescription ("" when absent).
    instances : int or None
        Number of instances, when the server says.
    orthanc_id : str or None
        Orthanc's identifier of the series (REST only).
    """

    series_uid: str
    modality: str
    description: str
    instances: int | None = None
    orthanc_id: str | None = None


class StudyFetcher(Protocol):
    """Lists a study's series and downloads one of them into a folder."""

    name: str

    def list_series(self, study_id: str, study_uid: str) -> list[SeriesEntry]:
        """The study's series (``study_id``: Orthanc's identifier; ``study_uid``: its UID)."""
        ...

    def download(self, study_uid: str, entry: SeriesEntry, folder: Path) -> list[Path]:
        """Write the series' instances into ``folder``; the files written."""
        ...


class RestFetcher:
    """Orthanc's REST API: series records and one ZIP archive per series."""

    name = "rest"

    def __init__(self, client: OrthancClient) -> None:
        self.client = client

    def list_series(self, study_id: str, study_uid: str) -> list[SeriesEntry]:
        """``/studies/{id}`` then ``/series/{id}`` for each of its series."""
        out = []
        for orthanc_id in self.client.study(study_id).get("Series", []):
            record = self.client.series(orthanc_id)
            tags = record.get("MainDicomTags", {})
            out.append(
                SeriesEntry(
                    series_uid=str(tags.get("SeriesInstanceUID", "")),
                    modality=str(tags.get("Modality", "") or ""),
                    description=str(tags.get("SeriesDescription", "") or ""),
                    instances=len(record.get("Instances", [])),
                    orthanc_id=str(record.get("ID", orthanc_id)),
                )
            )
        return out

    def download(self, study_uid: str, entry: SeriesEntry, folder: Path) -> list[Path]:
        """``/series/{id}/archive``, unpacked without the archive's (PHI-bearing) folder names."""
        if entry.orthanc_id is None:
            raise ValueError(f"series {entry.series_uid}: no Orthanc identifier (REST fetch)")
        return self.client.download_series(entry.orthanc_id, folder)


class DicomwebFetcher:
    """DICOMweb: QIDO-RS to list the series, WADO-RS to retrieve one."""

    name = "dicomweb"

    def __init__(self, client: OrthancClient) -> None:
        self.client = client

    def list_series(self, study_id: str, study_uid: str) -> list[SeriesEntry]:
        """QIDO-RS ``/studies/{uid}/series``."""
        return [_entry(item) for item in self.client.qido_series(study_uid)]

    def download(self, study_uid: str, entry: SeriesEntry, folder: Path) -> list[Path]:
        """WADO-RS ``/studies/{uid}/series/{uid}``."""
        return self.client.wado_series(study_uid, entry.series_uid, folder)


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _entry(item: dict[str, Any]) -> SeriesEntry:
    count = _value(item, "00201209")
    return SeriesEntry(
        series_uid=str(_value(item, "0020000E") or ""),
        modality=str(_value(item, "00080060") or ""),
        description=str(_value(item, "0008103E") or ""),
        instances=int(count) if count is not None else None,
    )


def make_fetcher(kind: Literal["rest", "dicomweb"], client: OrthancClient) -> StudyFetcher:
    """The fetcher ``--fetch`` names."""
    return DicomwebFetcher(client) if kind == "dicomweb" else RestFetcher(client)
