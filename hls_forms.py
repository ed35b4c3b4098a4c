"""Playlist forms for ``ingest_hls.py`` beyond one MPEG-TS file per segment (issue 13).

- **Byte ranges** (``EXT-X-BYTERANGE``, RFC 8216 4.3.2.2; a packager's ``single_file`` output):
  ``byteranges`` works out each entry's ``(offset, length)`` (an offset left out is the end of
  the previous entry's range of the same resource; ``ingest_hls.read_range`` reads just those
  bytes) and ``check_ranges`` finds a range that runs past the end of its file before anything
  is registered.
- **Audio renditions** (``EXT-X-MEDIA TYPE=AUDIO`` with a ``URI``): ``audio_rendition`` is the
  rendition a variant's ``AUDIO`` group plays with (its ``DEFAULT=YES`` one, else the first), and
  ``video_variants`` leaves out the audio-only variants packagers list beside the video ones
  (libavformat lists its audio rendition as a variant too, often with the higher bandwidth).
- **Containers**: ``check_container`` refuses a segment whose media is not the container its
  name says (``.ts`` that is MP4, an HTML error page, ...) or not that of the playlist's first.

Errors are ``FormError``; ``str()`` is the one line to show.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

__all__ = ["FormError", "audio_rendition", "byteranges", "check_container", "check_ranges", "describe", "shown",
           "video_variants"]


class FormError(Exception):
    """A playlist form cannot be read as it says; ``str()`` is the one line to show."""


class _Ranged(Protocol):
    uri: str
    sequence: int
    byterange: tuple[int, int] | None


def _is_url(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def shown(uri: str) -> str:
    """``uri`` for messages and logs: a URL without its query (it may carry a signature)."""
    return uri.split("?", 1)[0] if _is_url(uri) else uri


def describe(byterange: tuple[int, int]) -> str:
    """A range as the playlist writes it (``length@offset``) and as bytes (first-last)."""
    offset, length = byterange
    return f"{length}@{offset} (bytes {offset}-{offset + length - 1})"


# --------------------------------------------------------------------------------------------
# Byte ranges


def byteranges(segments: Iterable[Any], uris: Sequence[str]) -> list[tuple[int, int] | None]:
    """``(offset, length)`` of each m3u8 segment with ``EXT-X-BYTERANGE`` (None without one).

    ``uris`` are the segments' resolved URIs: an offset left out continues the previous entry's
    range only when that entry is a range of the same resource, as RFC 8216 requires."""
    ranges: list[tuple[int, int] | None] = []
    previous: tuple[str, int] | None = None  # uri and end of the previous entry's range
    for segment, uri in zip(segments, uris, strict=True):
        text = getattr(segment, "byterange", None)
        if not text:
            ranges.append(None)
            previous = None
            continue
        length_text, _, offset_text = str(text).strip().partition("@")
        try:
            length = int(length_text)
            offset = int(offset_text) if offset_text else None
        except ValueError as exc:
            raise FormError(f"segment {shown(uri)}: EXT-X-BYTERANGE:{text} is not length[@offset]") from exc
        if offset is None:
            if previous is None or previous[0] != uri:
                raise FormError(f"segment {shown(uri)}: EXT-X-BYTERANGE:{text} has no offset and does not follow "
                                "a range of the same file")
            offset = previous[1]
        if length < 1 or offset < 0:
            raise FormError(f"segment {shown(uri)}: EXT-X-BYTERANGE:{text} is empty or negative")
        ranges.append((offset, length))
        previous = (uri, offset + length)
    return ranges


def _past_end(uri: str, byterange: tuple[int, int], size: int) -> FormError:
    return FormError(f"{shown(uri)} byte range {describe(byterange)} runs past the end of the file ({size} bytes)")


async def _size(uri: str, session: aiohttp.ClientSession | None) -> int | None:
    """The resource's size in bytes, if it can be told without reading it."""
    if not _is_url(uri):
        try:
            return Path(uri).stat().st_size
        except OSError:
            return None  # reading it will say why
    if session is None:
        return None
    try:
        async with session.head(uri, allow_redirects=True) as response:
            length = response.headers.get("Content-Length")
            return int(length) if response.status == 200 and length and length.isdigit() else None
    except (aiohttp.ClientError, TimeoutError):
        return None  # reading it will say why


async def check_ranges(refs: Sequence[_Ranged], session: aiohttp.ClientSession | None) -> None:
    """Raise ``FormError`` for the first entry whose byte range runs past the end of its file (each
    file's size asked for once), so a bad playlist is refused before anything is registered."""
    sizes: dict[str, int | None] = {}
    for ref in refs:
        if ref.byterange is None:
            continue
        if ref.uri not in sizes:
            sizes[ref.uri] = await _size(ref.uri, session)
        size = sizes[ref.uri]
        offset, length = ref.byterange
        if size is not None and offset + length > size:
            raise FormError(f"segment {ref.sequence}: {_past_end(ref.uri, ref.byterange, size)}")


# --------------------------------------------------------------------------------------------
# Master playlists: variants and audio renditions

_AUDIO_CODECS = ("mp4a", "ac-3", "ec-3", "opus", "flac", "mp3")


def _audio_rendition_uris(master: Any) -> set[str]:
    return {m.uri for m in master.media if (m.type or "").upper() == "AUDIO" and m.uri}


def video_variants(master: Any) -> list[Any]:
    """The variants of an m3u8 master playlist that carry video: not the audio renditions listed
    as variants too, nor variants whose ``CODECS`` are all audio. All of them if none does."""
    renditions = _audio_rendition_uris(master)

    def audio_only(variant: Any) -> bool:
        codecs = [c.strip().lower() for c in (variant.stream_info.codecs or "").split(",") if c.strip()]
        return variant.uri in renditions or (bool(codecs) and all(c.startswith(_AUDIO_CODECS) for c in codecs))

    chosen = [v for v in master.playlists if not audio_only(v)]
    return chosen or list(master.playlists)


def audio_rendition(master: Any, variant: Any) -> str | None:
    """The URI (as written) of the ``EXT-X-MEDIA TYPE=AUDIO`` rendition ``variant`` plays with: the
    ``DEFAULT=YES`` one of its ``AUDIO`` group, else the group's first. None when the variant names
    no group or the group's renditions have no URI (their audio is in the variant's segments)."""
    group = variant.stream_info.audio
    if not group:
        return None
    renditions = [m for m in master.media
                  if (m.type or "").upper() == "AUDIO" and m.group_id == group and m.uri]
    if not renditions:
        return None
    chosen = next((m for m in renditions if (m.default or "").upper() == "YES"), renditions[0])
    return str(chosen.uri)


# --------------------------------------------------------------------------------------------
# Containers

# What a segment's name says it is, by extension, and the libavformat demuxers that are that.
_CLAIMS = {
    ".ts": ("MPEG-TS", ("mpegts",)),
    ".aac": ("ADTS AAC", ("aac",)),
    ".mp3": ("MP3", ("mp3",)),
    ".ac3": ("AC-3", ("ac3",)),
    ".ec3": ("E-AC-3", ("eac3",)),
    ".m4s": ("fMP4", ("mov",)),
    ".mp4": ("MP4", ("mov",)),
    ".m4a": ("MP4", ("mov",)),
    ".m4v": ("MP4", ("mov",)),
    ".cmfv": ("CMAF", ("mov",)),
    ".cmfa": ("CMAF", ("mov",)),
}


def check_container(uri: str, format_name: str, first: tuple[str, str] | None = None) -> None:
    """Raise ``FormError`` if the media read from segment ``uri`` (libavformat's ``format_name``)
    is not the container its name claims, or not the one of the playlist's ``first`` segment
    (its URI and format name)."""
    demuxers = set(format_name.split(","))
    suffix = PurePosixPath(urlsplit(uri).path).suffix.lower()
    claim = _CLAIMS.get(suffix)
    if claim is not None and not demuxers & set(claim[1]):
        raise FormError(f"segment {shown(uri)} is not {claim[0]} as its name says: it reads as {format_name}")
    if first is not None and format_name != first[1]:
        raise FormError(f"segment {shown(uri)} reads as {format_name}, not {first[1]} like the playlist's "
                        f"first segment {shown(first[0])}")
