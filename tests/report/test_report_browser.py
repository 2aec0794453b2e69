"""Open report.html in headless Chromium: it loads without console errors, every figure decodes and is
laid out, and a full-page screenshot is saved next to the report.

The report carries a tiny inline self-check script that writes each image's state and any script or
console error into #pulse-selfcheck on load; `--dump-dom` gives us the DOM after load to read it.
Debian's `chromium` package is installed with apt-get when it is missing; the test skips only when that
is impossible.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pulse.report import build_report

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def _apt_install_chromium() -> str | None:
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "chromium"]
    try:
        if subprocess.run(install, capture_output=True, timeout=900, env=env).returncode != 0:
            subprocess.run([apt, "update"], capture_output=True, timeout=600, env=env)
            subprocess.run(install, capture_output=True, timeout=900, env=env)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or _apt_install_chromium()
    if path is None:
        pytest.skip("headless Chromium is not installed and `apt-get install -y chromium` is not possible "
                    "here (needs root, apt and the Debian archive); install chromium to run this test")
    return path


def _run(chromium: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_report_of_a_real_small_run_opens_in_headless_chromium(chromium, tmp_path, small_run):
    """The report built from a real (small) `pulse run`: every scenario, method and target present."""
    report = build_report([small_run], tmp_path / "real")
    _check_in_browser(chromium, tmp_path, report)


@pytest.mark.parametrize("full", [False, True], ids=["paper-outputs", "with-curves-matched-probes"])
def test_report_opens_in_headless_chromium(chromium, tmp_path, synth, full):
    run = synth.write_run(tmp_path / "run_a", synth.make_full() if full else synth.make_results())
    _check_in_browser(chromium, tmp_path, build_report([run], tmp_path / "out"))


def _check_in_browser(chromium, tmp_path, report):
    url = report.resolve().as_uri()

    dom = _run(chromium, tmp_path, "--window-size=1280,2000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'<div id="pulse-selfcheck"([^>]*)>(.*?)</div>', dom.stdout, re.S)
    assert match, "self-check element missing from the dumped DOM"
    attrs, text = match.groups()
    assert 'data-status="ok"' in attrs, f"self-check failed: {attrs} {text}"
    n_images = report.read_text().count("<img ")
    assert n_images >= 2 and f'data-images="{n_images}"' in attrs and 'data-errors="0"' in attrs, attrs
    for fid in ("figure4", "figure5"):
        line = re.search(rf"^{fid} (\w+) natural (\d+)x(\d+) box (\d+)x(\d+)$", text, re.M)
        assert line, text
        status, nat_w, nat_h, box_w, box_h = line.groups()
        assert status == "ok" and int(nat_w) > 0 and int(box_w) > 0 and int(box_h) > 0, line.group(0)
    assert not _console_lines(dom.stderr), _console_lines(dom.stderr)

    shot = report.parent / "report.png"
    res = _run(chromium, tmp_path, "--window-size=1280,4000", f"--screenshot={shot}", url)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not _console_lines(res.stderr), _console_lines(res.stderr)
    assert shot.stat().st_size > 50_000
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        colors = im.convert("RGB").resize((320, 1000)).getcolors(maxcolors=1_000_000)
        assert colors is not None and len(colors) > 50  # not a blank page
    print(f"screenshot: {shot}")
