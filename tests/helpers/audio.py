"""Real audio files ffmpeg refuses but libsndfile reads, made from real Ogg Vorbis files.

`pad_vorbis_setup_header` appends bytes after the framing bit of a Vorbis stream's setup header
(the third header packet) and re-pages the file with mutagen's Ogg page writer (CRCs and page
numbers redone). libvorbis reads headers forwards and ignores what follows the framing bit, so
libsndfile decodes every sample; ffmpeg's Ogg demuxer reads the setup header backwards from its
last set bit to find the modes (libavcodec/vorbis_parser.c) and refuses the file: "Invalid Setup
header", "Header processing failed". This is the failure real Vorbis files with padded headers meet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PADDING = b"\x01\x01\x01\x01\x01"  # set low bits: the backward search stops in them, not at the framing bit


def pad_vorbis_setup_header(src: Path, dst: Path, padding: bytes = PADDING) -> Path:
    """Copy `src` (Ogg Vorbis) to `dst` with `padding` after its setup header (module docstring)."""
    from mutagen.ogg import OggPage

    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        first = OggPage(f)  # the identification header, alone on the first page
        pages: list[OggPage] = []
        while True:  # the pages of the comment and setup headers
            pages.append(OggPage(f))
            if len(OggPage.to_packets(pages, strict=False)) >= 2 and pages[-1].complete:
                break
        packets = OggPage.to_packets(pages, strict=False)
        if not (packets[0].startswith(b"\x03vorbis") and packets[1].startswith(b"\x05vorbis")):
            raise ValueError(f"{src} is not Ogg Vorbis")
        packets[1] += padding
        new = OggPage.from_packets(packets, sequence=pages[0].sequence)
        for page in new:
            page.serial = first.serial
        OggPage.replace(f, pages, new)
    return dst
