"""A COCO JSON's `categories` list without parsing the whole file.

Dataset configs need only the category list, but it sits at the end of the official
instances_train2017.json, after 450 MB of images and annotations: a full json.load takes tens of
seconds and gigabytes, on every rank and every run. This scans the bytes for the key and decodes
only its value. In valid JSON the byte string "categories" followed by a colon can only be an
object key (a quote inside a string is escaped), so the one thing a scan cannot tell is the
nesting depth: when the key occurs more than once, or anything is unexpected, the whole file is
parsed as before.
"""
from __future__ import annotations

import json
from pathlib import Path

KEY = b'"categories"'
CHUNK = 8 << 20
WINDOW = 64 << 10  # bytes decoded at first after the key; doubled while the list runs on


def read_categories(path: str | Path) -> list | None:
    """The value of the top-level "categories" key (None when there is none). Raises OSError and
    json.JSONDecodeError as json.loads(path.read_text()) would."""
    path = Path(path)
    with path.open("rb") as f:
        offsets = _key_offsets(f)
        if len(offsets) == 1 and _starts_object(f):
            value = _decode_at(f, offsets[0] + len(KEY))
            if _looks_like_categories(value):
                return value
    return json.loads(path.read_text()).get("categories")


def _key_offsets(f) -> list[int]:
    """File offsets of every "categories" that is an object key."""
    found, tail, base = [], b"", 0
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return found
        buf = tail + chunk
        start = base - len(tail)
        i = buf.find(KEY)
        while i >= 0:
            if _unescaped(buf, i) and _colon_follows(f, start + i + len(KEY)):
                found.append(start + i)
            i = buf.find(KEY, i + 1)
        tail = buf[-(len(KEY) - 1):]
        base += len(chunk)


def _unescaped(buf: bytes, i: int) -> bool:
    """The quote at buf[i] opens a string token (not an escaped quote inside one)."""
    j = i
    while j > 0 and buf[j - 1] == 0x5C:  # backslash
        j -= 1
    return (i - j) % 2 == 0


def _colon_follows(f, offset: int) -> bool:
    here = f.tell()
    f.seek(offset)
    rest = f.read(256).lstrip()
    f.seek(here)
    return rest[:1] == b":"


def _starts_object(f) -> bool:
    f.seek(0)
    return f.read(64).lstrip()[:1] == b"{"


def _decode_at(f, offset: int):
    """The JSON value after the key's colon, decoding a growing window of the file."""
    size = WINDOW
    while True:
        f.seek(offset)
        text = f.read(size).decode("utf-8", errors="replace").lstrip()[1:].lstrip()  # past the colon
        try:
            return json.JSONDecoder().raw_decode(text)[0]
        except json.JSONDecodeError:
            if f.tell() - offset < size:  # the window already reached the end of the file
                return None
            size *= 2


def _looks_like_categories(value) -> bool:
    return isinstance(value, list) and all(isinstance(c, dict) and "id" in c and "name" in c for c in value)
