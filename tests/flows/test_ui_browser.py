"""The Prefect UI in a real browser: a Prefect server started here (its own PREFECT_HOME),
a tiny ``advloop run`` against it, then headless Chromium on the UI pages a user opens.

The run labels NH3 with ASE's EMT (a toy, but a real calculator: a few seconds of
compute in all; the level of theory is beside the point here) over two generations that
explore, started in the background: while it goes on, the test polls the server for the
``<system>-summary`` version published after generation 0 and opens it in Chromium (the
run's state and generation, the learning curve as an image).

Chromium is driven without Python dependencies (see ``ui_browser.py``): one
``chromium --headless --dump-dom [--screenshot]`` process per page, reading the DOM the
single-page app rendered. Checked, in the default (V2) UI, by following the UI's own
links: the flow run named after the system, completed, with its ``<system>-generations``
table artifact on its Artifacts tab; the artifact's versions on the key's page; the
latest version as a table with every column of ``advloop.flows.artifacts.TABLE_COLUMNS`` and a row
per generation. In the V1 UI: the flow run link the run printed in its log, and the same
table. Then generation 0's flow run, whose log shows training's progress (each member's
epochs and each member trained), and the latest version of each figure artifact
(``advloop.flows.artifacts.FIGURES``) with its SVG image in the page. Screenshots (PNG) and the DOM dumps go to ``$ADVLOOP_TEST_ARTIFACTS/prefect-ui``
(default ``<repo>/test-artifacts/prefect-ui``); the test prints the folder.

Without Chromium the test is skipped, except under CI (``CI`` set and not false), where it
fails: CI installs Debian's ``chromium`` package.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from advloop.flows.artifacts import FIGURES, TABLE_COLUMNS, artifact_key
from tests.flows.prefect_server import clean_env, free_port, prefect_server
from tests.flows.ui_browser import Page, PngInfo, find_chromium, png_info, render

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "nh3-ui"

CONFIG = """
system:
  name: {name}
  structures: {structures}
initial_data: {{n_structures: 6, displacement: 0.05, seed: 0}}
labels: {{kind: emt}}
model: {{n_atom_basis: 8, n_interactions: 1, n_rbf: 8, cutoff: 4.0}}
committee: {{n_members: 2, seed: 0, bootstrap: true}}
training: {{max_epochs: 3, warm_start_epochs: 2, batch_size: 6}}
exploration: {{kind: adversarial, n_seeds: 2, n_steps: 2, temperature: 1000.0}}
selection: {{percentile: 0, rmsd_threshold: 0.001, max_selected: 2}}
convergence: {{force_std_threshold: 1.0e-6}}
budget: {{max_generations: 2, max_labels: 10}}
output_dir: {output_dir}
"""


def artifacts_dir() -> Path:
    root = os.environ.get("ADVLOOP_TEST_ARTIFACTS") or REPO / "test-artifacts"
    return Path(root).resolve() / "prefect-ui"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _chromium_or_skip() -> str:
    chromium = find_chromium()
    if chromium:
        return chromium
    message = (
        "Chromium not found (no chromium, chromium-browser or google-chrome on PATH, "
        "no $CHROMIUM); on Debian: apt-get install --no-install-recommends chromium"
    )
    if _in_ci():
        pytest.fail(message + " (CI is set: the browser test must run there)")
    pytest.skip(message)


def _api(base: str, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"{base}/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@contextlib.contextmanager
def ui_server(home: Path) -> Iterator[str]:
    """A Prefect server with its UI on a free port of 127.0.0.1; yields its base URL
    (``http://127.0.0.1:PORT``, the API under ``/api``) once it answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with prefect_server(
        home / "home",
        port=port,
        PREFECT_UI_API_URL=f"{base}/api",
        PREFECT_UI_URL=base,
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
    ) as server:
        yield server.base


def _open(
    chromium: str, url: str, ready: Callable[[Page], bool], name: str, screenshot: bool = False
) -> Page:
    """``url`` rendered by Chromium, once more with a longer virtual-time budget if the page
    was not ``ready`` yet; the DOM (and screenshot) is kept as ``<name>.html`` (``.png``)."""
    out = artifacts_dir()
    shot = out / f"{name}.png" if screenshot else None
    for budget_ms in (20000, 60000):
        page = render(chromium, url, screenshot=shot, budget_ms=budget_ms)
        (out / f"{name}.html").write_text(page.dom)
        if ready(page):
            return page
    pytest.fail(
        f"{url} did not show what was expected (DOM in {out / name}.html); "
        f"title {page.title!r}, text: {page.text[:1500]}"
    )


def _check_screenshot(path: Path) -> None:
    info = png_info(path)
    assert (info.width, info.height) == (1400, 1000), info
    # the page's text, tables and side bar: far from a blank, single-colour picture
    assert info.varied_rows >= info.height // 10, f"{path} looks blank: {info}"


@pytest.mark.slow
@pytest.mark.system
def test_prefect_ui_shows_the_flow_run_and_its_table_artifact(tmp_path, capsys):
    chromium = _chromium_or_skip()
    out = artifacts_dir()
    out.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\n[prefect UI browser test] screenshots and DOM dumps: {out}")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        CONFIG.format(
            name=SYSTEM,
            structures=REPO / "examples" / "structures" / "nh3.xyz",
            output_dir=tmp_path / "runs",
        )
    )
    key = artifact_key(SYSTEM, "generations")

    started = time.monotonic()
    with ui_server(tmp_path) as base, _advloop_run(config, base, tmp_path) as (proc, output):
        up = time.monotonic()
        # While the run goes on: the live summary after generation 0, as the UI shows it.
        live, alive = _first_version(
            base, artifact_key(SYSTEM, "summary"), "**generation 0 finished**", proc
        )
        assert alive, "the run ended before its live summary after generation 0 was seen"
        page = _open(
            chromium,
            f"{base}/v2/artifacts/artifact/{live['id']}",
            lambda p: "generation 0 finished" in p.text and bool(_svg_images(p)),
            "v2-live-summary",
            screenshot=True,
        )
        assert f"{SYSTEM}: running" in page.text
        assert "generations finished 1 (budget 2)" in page.text  # its table, as text
        _check_screenshot(out / "v2-live-summary.png")
        live_shown = time.monotonic()
        still_running = proc.poll() is None

        assert proc.wait(timeout=600) == 0, output()[-6000:]
        ran = time.monotonic()

        # What the server holds, to compare the pages with.
        [run] = _api(base, "flow_runs/filter", {"flow_runs": {"name": {"any_": [SYSTEM]}}})
        assert run["state_type"] == "COMPLETED"
        created, ended = (datetime.fromisoformat(t) for t in (live["created"], run["end_time"]))
        assert created < ended  # the live version came before the run ended
        versions = _api(
            base,
            "artifacts/filter",
            {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"},
        )
        assert len(versions) == 3 and {v["flow_run_id"] for v in versions} == {run["id"]}
        latest = versions[0]
        rows = json.loads(latest["data"])
        assert [r["generation"] for r in rows] == [0, 1, 2]

        # V2 (the UI the server's root opens): the flow run's Artifacts tab ...
        run_title = f"Flow Run: {SYSTEM} • Prefect Server"
        key_link = f"/v2/artifacts/key/{key}"
        page = _open(
            chromium,
            f"{base}/v2/runs/flow-run/{run['id']}?tab=Artifacts",
            lambda p: p.title == run_title and key_link in p.links,
            "v2-flow-run",
            screenshot=True,
        )
        assert "Switch to V1 UI" in page.text  # the V2 app rendered it
        assert "Completed" in page.text and "advloop-active-learning" in page.text
        assert "TABLE" in page.text and key in page.text
        _check_screenshot(out / "v2-flow-run.png")

        # ... links to the key's page, which lists every version ...
        version_links = {f"/v2/artifacts/artifact/{v['id']}" for v in versions}
        page = _open(
            chromium, base + key_link, lambda p: version_links <= set(p.links), "v2-artifact-key"
        )
        assert {
            link for link in page.links if link.startswith("/v2/artifacts/artifact/")
        } == version_links

        # ... and the latest version is the table, every column and a row per generation.
        page = _open(
            chromium,
            f"{base}/v2/artifacts/artifact/{latest['id']}",
            lambda p: p.table_with_header("generation") is not None,
            "v2-generations-table",
            screenshot=True,
        )
        _check_table(page, key, rows, latest["description"])
        assert f"/v2/runs/flow-run/{run['id']}" in page.links
        _check_screenshot(out / "v2-generations-table.png")

        # V1: the link the run printed ("View at ...") and the same table.
        logged = f"{base}/runs/flow-run/{run['id']}"
        assert f"View at {logged}" in output()
        page = _open(
            chromium, logged, lambda p: p.title == run_title, "v1-flow-run", screenshot=True
        )
        assert "Switch to V2 UI" in page.text and "Completed" in page.text
        _check_screenshot(out / "v1-flow-run.png")
        page = _open(
            chromium,
            f"{base}/artifacts/artifact/{latest['id']}",
            lambda p: p.table_with_header("generation") is not None,
            "v1-generations-table",
            screenshot=True,
        )
        _check_table(page, key, rows, latest["description"])
        assert f"/runs/flow-run/{run['id']}" in page.links
        _check_screenshot(out / "v1-generations-table.png")

        # Training's progress in the generation's log: each member's epochs (the
        # advloop.progress logger, from the member's task) and each member trained.
        [gen0] = _api(
            base, "flow_runs/filter", {"flow_runs": {"name": {"any_": [f"{SYSTEM}-gen000"]}}}
        )
        progress = ("training gen 0 member 0: epoch 1 of at most 3", "training gen 0 member 1")
        members = ("gen 0: member", "trained, 1 of 2", "trained, 2 of 2")
        page = _open(
            chromium,
            f"{base}/v2/runs/flow-run/{gen0['id']}",
            lambda p: all(line in p.text for line in progress + members),
            "v2-training-log",
            screenshot=True,
        )
        _check_screenshot(out / "v2-training-log.png")

        # The figures: the latest version of each, its SVG image in the page.
        for what in FIGURES:
            [figure] = _api(
                base,
                "artifacts/filter",
                {
                    "artifacts": {"key": {"any_": [artifact_key(SYSTEM, what)]}},
                    "sort": "CREATED_DESC",
                    "limit": 1,
                },
            )
            page = _open(
                chromium,
                f"{base}/v2/artifacts/artifact/{figure['id']}",
                lambda p: bool(_svg_images(p)),
                f"v2-{what}",
                screenshot=True,
            )
            [image] = _svg_images(page)
            assert image == figure["data"].split("](", 1)[1].split(")", 1)[0]  # the one we sent
            assert ET.fromstring(base64.b64decode(image.split(",", 1)[1])).tag.endswith("svg")
            _check_screenshot(out / f"v2-{what}.png")
        browsed = time.monotonic()
    with capsys.disabled():
        print(
            f"[prefect UI browser test] server up {up - started:.0f} s, live summary in "
            f"Chromium {live_shown - up:.0f} s (the run still going afterwards: "
            f"{still_running}), advloop run {ran - up:.0f} s in all, 9 more pages in "
            f"Chromium {browsed - ran:.0f} s"
        )


@contextlib.contextmanager
def _advloop_run(
    config: Path, base: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen, Callable[[], str]]]:
    """``advloop run config`` against the server at ``base``, started in the background:
    yields the process and a function that returns its output (stdout and stderr) so far; it is
    killed on the way out if it is still running."""
    log = tmp_path / "advloop-run.log"
    code = "from advloop.flows.cli import app; app(prog_name='advloop')"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "run", str(config)],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=clean_env(
                PREFECT_API_URL=f"{base}/api",
                PREFECT_UI_URL=base,
                PREFECT_HOME=str(tmp_path / "client-home"),
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            ),
        )
        try:
            yield proc, log.read_text
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _first_version(
    base: str, key: str, text: str, proc: subprocess.Popen, timeout: float = 300
) -> tuple[dict, bool]:
    """The first version of artifact ``key`` whose data holds ``text`` (polled every 0.2 s
    until ``timeout`` s), and whether ``proc`` was still running when it was found."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = proc.poll() is None
        versions = _api(
            base,
            "artifacts/filter",
            {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"},
        )
        found = next((v for v in reversed(versions) if text in (v["data"] or "")), None)
        if found is not None:
            return found, running
        if not running:
            pytest.fail(f"the run ended with no {key} version holding {text!r}")
        time.sleep(0.2)
    pytest.fail(f"no {key} version holding {text!r} within {timeout} s")


def _svg_images(page: Page) -> list[str]:
    """The ``src`` of every ``<img>`` of the page that is an SVG data URI."""
    return re.findall(r'<img[^>]*\ssrc="(data:image/svg\+xml;base64,[A-Za-z0-9+/=]+)"', page.dom)


def _check_table(page: Page, key: str, rows: list[dict], description: str) -> None:
    assert page.title == f"Artifact: {key} • Prefect Server"
    assert description in page.text
    header, body = page.table_with_header("generation")
    assert header == list(TABLE_COLUMNS)
    assert [cells[0] for cells in body] == [str(r["generation"]) for r in rows]
    for cells, row in zip(body, rows):
        assert cells[header.index("dataset_size")] == str(row["dataset_size"])
        assert float(cells[header.index("val_forces_mae_eV_A")]) == pytest.approx(
            row["val_forces_mae_eV_A"]
        )


def _png(width: int, height: int, pixel: Callable[[int, int], bytes]) -> bytes:
    """An RGB PNG, rows alternately unfiltered and with the 'up' filter."""
    raw, previous = bytearray(), bytes(3 * width)
    for y in range(height):
        line = b"".join(pixel(x, y) for x in range(width))
        if y % 2:
            raw += b"\x02" + bytes((a - b) % 256 for a, b in zip(line, previous))
        else:
            raw += b"\x00" + line
        previous = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def test_png_check_tells_a_blank_picture_from_one_with_content(tmp_path):
    blank = tmp_path / "blank.png"
    blank.write_bytes(_png(40, 30, lambda x, y: b"\xf0\xf1\xf2"))
    assert png_info(blank) == PngInfo(40, 30, 0)
    text = tmp_path / "text.png"
    text.write_bytes(
        _png(40, 30, lambda x, y: b"\x00\x00\x00" if (x * y) % 7 == 1 else b"\xff\xff\xff")
    )
    info = png_info(text)
    assert (info.width, info.height) == (40, 30) and info.varied_rows > 20
    with pytest.raises(ValueError, match="not a PNG"):
        (tmp_path / "x.png").write_bytes(b"GIF89a")
        png_info(tmp_path / "x.png")
