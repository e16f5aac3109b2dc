"""One data set, one reading: refuse a received file whose header read and full read could disagree.

The listener validates the UIDs of a header read (`dcmread(stop_before_pixels=True)`); the worker reads the
whole file. pydicom keeps the *last* occurrence of a repeated tag and reads elements that follow the pixel
data, so a data set with a second Study Instance UID after the pixel data would be spooled under one
(validated) UID and analysed, and written into SR/SEG/key image, under another, perhaps a path or another
patient's study. Other readers (a PACS, dcmtk) may even pick the first occurrence. So, before any header
read, the listener walks the top-level elements of the file once, values over a few bytes skipped (pixel
data is never loaded), and refuses:

- a tag that occurs twice at the top level (the standard allows each once; readers differ on which wins);
- an element after the pixel data whose tag sorts before it (the header read never sees it, the full
  read does);
- a deflated data set that inflates past the instance size limit (pydicom inflates it whole, in memory).

It returns the top-level Study/Series/SOP Instance UIDs as the full read sees them, so the listener can
check they equal the header read's. Refusals carry a fixed reason and the attribute keyword, never a value.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import keyword_for_tag
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

#: Values longer than this are skipped (seeked over), never read: pixel data, big sequences' bytes.
DEFER_BYTES = 1024
#: Where the pixel data starts (Float, Double Float, Pixel Data): the header read stops at these.
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: The UIDs the listener validates and files the instance under.
UID_TAGS = {0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00080018: "SOPInstanceUID"}


class MalformedDataSet(ValueError):
    """The data set is not one unambiguous reading; `reason` is fixed text, `keyword` names the attribute."""

    def __init__(self, reason: str, keyword: str | None = None) -> None:
        super().__init__(reason if keyword is None else f"{reason}: {keyword}")
        self.reason = reason
        self.keyword = keyword


@dataclass(frozen=True)
class TopLevel:
    """What a full read of the file finds at the top level (UID values stripped of padding)."""

    uids: dict[str, str] = field(default_factory=dict)
    elements: int = 0


def scan_top_level(path: str | Path, max_dataset_bytes: int) -> TopLevel:
    """Walk the top-level elements of a Part 10 file once; raise MalformedDataSet (see the module doc)."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)  # raises for a file without "DICM" (pynetdicom always writes one)
        meta = _read_file_meta_info(fp)
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
        implicit = syntax == ImplicitVRLittleEndian
        little = syntax != ExplicitVRBigEndian
        stream: BinaryIO = fp
        if syntax == DeflatedExplicitVRLittleEndian:
            stream = _inflate(fp, max_dataset_bytes)
        return _walk(stream, _found_implicit(stream, implicit), little)


def _inflate(fp: BinaryIO, limit: int) -> BinaryIO:
    """The deflated data set inflated, but never past `limit` bytes (a small file can inflate to GBs)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    for chunk in iter(lambda: fp.read(1 << 20), b""):
        out += inflater.decompress(chunk, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise MalformedDataSet("deflated data set inflates past the instance size limit")
    out += inflater.flush()
    if len(out) > limit:
        raise MalformedDataSet("deflated data set inflates past the instance size limit")
    return io.BytesIO(bytes(out))


def _found_implicit(fp: BinaryIO, assumed: bool) -> bool:
    """pydicom's own test (filereader._is_implicit_vr): the first element's VR bytes decide, as they do
    for the header read, so both walks see the same elements."""
    start = fp.tell()
    head = fp.read(6)
    fp.seek(start)
    if len(head) < 6:
        return assumed
    return not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)


def _walk(fp: BinaryIO, implicit: bool, little: bool) -> TopLevel:
    seen: set[int] = set()
    uids: dict[str, str] = {}
    pixels_at: int | None = None
    count = 0
    elements = data_element_generator(fp, implicit, little, defer_size=DEFER_BYTES)
    while True:
        try:
            elem = next(elements)
        except StopIteration:
            break
        except EOFError:  # a value cut short (truncated pixel data): pydicom's full read ends there too
            break
        tag = int(elem.tag)
        count += 1
        if tag in seen:
            raise MalformedDataSet("element repeated in the data set", _keyword(tag))
        seen.add(tag)
        if pixels_at is not None and tag < pixels_at:
            raise MalformedDataSet("element after the pixel data", _keyword(tag))
        if tag in PIXEL_TAGS and pixels_at is None:
            pixels_at = tag
        if tag in UID_TAGS:
            value = getattr(elem, "value", None)
            if not isinstance(value, (bytes, bytearray)):  # deferred (over DEFER_BYTES) or a sequence
                raise MalformedDataSet("UID value too long or not text", UID_TAGS[tag])
            uids[UID_TAGS[tag]] = value.decode("ascii", "replace").strip("\x00 ")
    return TopLevel(uids=uids, elements=count)


def _keyword(tag: int) -> str:
    """The attribute's keyword, else its tag: what a log or a refusal may name."""
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
