"""Headless Chromium for browser tests of the Prefect UI, with no Python dependency beyond
the standard library: each page is one Chromium process run with ``--dump-dom`` (the DOM
after the single-page app has rendered, which ``--virtual-time-budget`` waits for) and,
when asked, ``--screenshot`` in the same run. Also a small HTML reader (title, text,
links, tables) and a PNG check that needs only ``zlib``.

The Chromium flags suit a closed network and a root user in a container: no sandbox, no
GPU, no QUIC, nothing fetched in the background, a fresh profile per page.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)
WINDOW = (1400, 1000)


def find_chromium() -> str | None:
    """``$CHROMIUM`` if set, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@dataclass
class Page:
    url: str
    dom: str
    title: str = ""
    text: str = ""
    links: list[str] = field(default_factory=list)
    tables: list[list[list[tuple[str, str]]]] = field(default_factory=list)

    def table_with_header(self, first: str) -> tuple[list[str], list[list[str]]] | None:
        """(header cells, body rows) of the first table whose first header cell is ``first``."""
        for table in self.tables:
            header = [text for row in table for tag, text in row if tag == "th"]
            if header and header[0] == first:
                body = [[text for tag, text in row if tag == "td"] for row in table]
                return header, [row for row in body if row]
        return None


class _Reader(HTMLParser):
    """Title, visible text, hrefs and tables (rows of (tag, text) cells) of a DOM dump."""

    _SKIP = {"script", "style", "noscript", "template"}
    _VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.text: list[str] = []
        self.links: list[str] = []
        self.tables: list[list[list[tuple[str, str]]]] = []
        self._stack: list[str] = []
        self._open: list[list[list[tuple[str, str]]]] = []  # nested tables being read
        self._cell: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in self._VOID:
            return  # never closed
        self._stack.append(tag)
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)
        elif tag == "table":
            self._open.append([])
        elif tag == "tr" and self._open:
            self._open[-1].append([])
        elif tag in ("th", "td") and self._open and self._open[-1]:
            self._cell = (tag, [])

    def handle_startendtag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            kind, parts = self._cell
            self._open[-1][-1].append((kind, " ".join("".join(parts).split())))
            self._cell = None
        elif tag == "table" and self._open:
            self.tables.append(self._open.pop())
        if tag in self._stack:  # tolerate sloppy nesting: close up to the matching tag
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data):
        if any(t in self._SKIP for t in self._stack):
            return
        if "title" in self._stack and "svg" not in self._stack:
            self.title.append(data)
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell[1].append(data)


def read_page(url: str, dom: str) -> Page:
    reader = _Reader()
    reader.feed(dom)
    reader.close()
    return Page(
        url=url,
        dom=dom,
        title=" ".join("".join(reader.title).split()),
        text=" ".join(" ".join(reader.text).split()),
        links=reader.links,
        tables=reader.tables,
    )


class ChromiumError(RuntimeError):
    pass


def render(
    chromium: str,
    url: str,
    screenshot: Path | None = None,
    budget_ms: int = 20000,
    timeout_s: float = 120,
) -> Page:
    """The DOM of ``url`` once the page has settled (``budget_ms`` of virtual time; the
    clock stops while network fetches are pending), and its screenshot if asked.

    Chromium runs in its own process group with a fresh profile; the group is killed and
    the profile removed whatever happens.
    """
    profile = tempfile.mkdtemp(prefix="advloop-chromium-")
    args = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
    ]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.unlink(missing_ok=True)
        args.append(f"--screenshot={screenshot}")
    proc = subprocess.Popen(
        [*args, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as timeout:
        raise ChromiumError(f"chromium did not finish {url} within {timeout_s} s") from timeout
    finally:
        try:  # the browser's helpers (zygote, renderer, GPU process) share its group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0 or not out.strip():
        tail = err.decode(errors="replace")[-3000:]
        raise ChromiumError(f"chromium exited {proc.returncode} on {url}: {tail}")
    if screenshot is not None and not screenshot.exists():
        raise ChromiumError(
            f"chromium wrote no screenshot of {url}: {err.decode(errors='replace')[-3000:]}"
        )
    return read_page(url, out.decode("utf-8", errors="replace"))


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    varied_rows: int  # rows that are not a single colour (see png_info)


def png_info(path: Path) -> PngInfo:
    """Size of a non-interlaced 8-bit PNG and how many of its rows hold more than one colour.

    The rows are decompressed but not unfiltered: a row is counted as varied when its
    filtered pixels after the first differ from each other. For a single-colour image every
    PNG filter (none, sub, up, average, Paeth) gives rows whose filtered pixels after the
    first are all equal, so such an image has no varied rows at all.
    """
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(
            f"{path}: unsupported PNG (depth {depth}, colour type {colour}, interlace {interlace})"
        )
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"{path}: {len(raw)} bytes of pixel data for {width}x{height}")
    varied = 0
    for row in range(height):
        start = row * (stride + 1) + 1 + channels  # skip the filter byte and the first pixel
        pixels = raw[start : start + stride - channels]
        if pixels != pixels[:channels] * (width - 1):
            varied += 1
    return PngInfo(width, height, varied)
