"""A small, fast reader of the few header elements lungslice needs.

Parsing a whole header with pydicom costs ~0.5 ms a file, as much as
decoding the pixels: it builds a Python object per element (GE files carry
hundreds of private ones) and converts values generically. This reader walks
the element stream of a Part 10 file with ``struct`` on a small buffer, keeps
the raw bytes of the wanted tags, skips everything else (sequences included)
and stops at PixelData, whose offset and length it records.

It handles the common case only - preamble and ``DICM``, explicit-VR file
meta, implicit or explicit VR little endian data sets (native or
encapsulated pixel data) - and raises :class:`RawHeaderUnsupported` for
anything else, in which case the caller uses pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["RawHeader", "RawHeaderUnsupported", "read_raw_header"]

_PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_NOT_LITTLE_ENDIAN_EXPLICIT = frozenset(("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"))
_CHUNK = 16384
_MAX_WANTED = 1 << 16  # the wanted elements are short strings and numbers
_TAG_LEN = struct.Struct("<HHL")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LEN = struct.Struct("<L")


class RawHeaderUnsupported(Exception):
    """The file is outside what :func:`read_raw_header` reads; use pydicom."""


@dataclass(frozen=True)
class RawHeader:
    """Raw values of the wanted top-level elements and where the pixels are.

    Attributes
    ----------
    elements : dict
        tag -> (VR or None for implicit VR, raw value bytes).
    transfer_syntax, media_class : str or None
        From the file meta information.
    has_pixels : bool
        Whether a top-level PixelData element was found.
    pixel_bytes, pixel_offset : int or None
        Length and file offset of a defined-length PixelData value.
    """

    elements: dict[int, tuple[str | None, bytes]]
    transfer_syntax: str | None
    media_class: str | None
    has_pixels: bool
    pixel_bytes: int | None
    pixel_offset: int | None


class _Buffer:
    """A window on a file, refilled from ``pos`` whenever a read leaves it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.data = b""
        self.start = 0  # file offset of data[0]
        self.eof = False
        self._fill(0, _CHUNK)

    def _fill(self, pos: int, n: int) -> None:
        want = max(n, _CHUNK)
        self.fh.seek(pos)
        self.data = self.fh.read(want)
        self.start = pos
        self.eof = len(self.data) < want

    def ensure(self, pos: int, n: int) -> int:
        """Make bytes ``[pos, pos + n)`` available; return the index of ``pos`` in ``data``."""
        i = pos - self.start
        if 0 <= i and i + n <= len(self.data):
            return i
        self._fill(pos, n)
        if n > len(self.data):
            raise RawHeaderUnsupported("the file ends inside an element")
        return 0

    def at_end(self, pos: int) -> bool:
        """True when ``pos`` is at (or past) the end of the file."""
        i = pos - self.start
        if 0 <= i < len(self.data):
            return False
        if self.eof and i >= len(self.data):
            return True
        self._fill(pos, 1)
        return not self.data


def _element_head(buf: _Buffer, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """Tag, VR (None if implicit or an item tag), value length, value offset."""
    i = buf.ensure(pos, 8)
    group, elem, length = _TAG_LEN.unpack_from(buf.data, i)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:
        return tag, None, length, pos + 8
    _, _, vr, short = _TAG_VR_SHORT.unpack_from(buf.data, i)
    if vr in _LONG_VRS:
        j = buf.ensure(pos + 8, 4)
        return tag, vr, _LEN.unpack_from(buf.data, j)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise RawHeaderUnsupported("not an explicit VR")
    return tag, vr, short, pos + 8


def _skip_sequence(buf: _Buffer, pos: int, implicit: bool, depth: int = 0) -> int:
    """Skip an undefined-length sequence starting at its first item; return the end."""
    if depth > 16:
        raise RawHeaderUnsupported("sequences nested too deep")
    while True:
        tag, _, length, pos = _element_head(buf, pos, True)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise RawHeaderUnsupported("sequence without an item")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements up to the item end
            tag, vr, length, value = _element_head(buf, pos, implicit)
            if tag == _ITEM_END:
                pos = value
                break
            if length == _UNDEFINED:
                inner_implicit = implicit or vr == b"UN"
                pos = _skip_sequence(buf, value, inner_implicit, depth + 1)
            else:
                pos = value + length


def _text(buf: _Buffer, pos: int, length: int) -> str:
    i = buf.ensure(pos, length)
    return buf.data[i : i + length].decode("latin-1").strip(" \x00")


def read_raw_header(path: str | Path, wanted: frozenset[int]) -> RawHeader:
    """Read the ``wanted`` top-level elements of a Part 10 file.

    Parameters
    ----------
    path : str or Path
        The file.
    wanted : frozenset of int
        Tags (``group << 16 | element``) whose raw values to keep.

    Raises
    ------
    RawHeaderUnsupported
        When the file is not plain little-endian Part 10 DICOM or is damaged
        (the caller falls back to pydicom, which reports the details).
    OSError
        When the file cannot be read.
    """
    with open(path, "rb") as fh:
        buf = _Buffer(fh)
        if len(buf.data) < 132 or buf.data[128:132] != b"DICM":
            raise RawHeaderUnsupported("no DICM preamble")
        pos = 132
        syntax = media_class = None
        while True:  # file meta: explicit VR little endian, group 0002
            i = buf.ensure(pos, 2)
            if buf.data[i : i + 2] != b"\x02\x00":
                break
            tag, _, length, value = _element_head(buf, pos, False)
            if length == _UNDEFINED:
                raise RawHeaderUnsupported("undefined length in file meta")
            if tag == 0x00020010:
                syntax = _text(buf, value, length)
            elif tag == 0x00020002:
                media_class = _text(buf, value, length)
            pos = value + length
        if syntax is None or syntax in _NOT_LITTLE_ENDIAN_EXPLICIT:
            raise RawHeaderUnsupported(f"transfer syntax {syntax}")
        implicit = syntax == _IMPLICIT_LE
        elements: dict[int, tuple[str | None, bytes]] = {}
        while not buf.at_end(pos):
            tag, vr, length, value = _element_head(buf, pos, implicit)
            if tag == _PIXEL_DATA:
                if length == _UNDEFINED:
                    return RawHeader(elements, syntax, media_class, True, None, None)
                return RawHeader(elements, syntax, media_class, True, length, value)
            if length == _UNDEFINED:
                pos = _skip_sequence(buf, value, implicit or vr == b"UN")
                continue
            if tag in wanted:
                if length > _MAX_WANTED:
                    raise RawHeaderUnsupported(f"element {tag:08X} of {length} bytes")
                i = buf.ensure(value, length)
                elements[tag] = (
                    None if vr is None else vr.decode("ascii"),
                    bytes(buf.data[i : i + length]),
                )
            elif tag > _PIXEL_DATA:
                break
            pos = value + length
        return RawHeader(elements, syntax, media_class, False, None, None)
