"""`pandacead report` in a real headless browser: it loads without console errors and shows the charts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest
from conftest import cli, drop, job, run_once

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=timeout)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Content Security Policy" in line]


class Charts(HTMLParser):
    """The rendered DOM's charts: data-chart name -> number of drawn series (polylines)."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, int] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and "chart" in (a.get("class") or ""):
            self._current = a.get("data-chart") or "?"
            self.charts[self._current] = 0
        elif tag == "polyline" and self._current is not None:
            self.charts[self._current] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_a_chart_per_account_dataset_and_job(home, tmp_path):
    drop(home, "a1.json", job("a1", epsilon=1.5, epochs=6))
    drop(home, "b1.json", job("b1", user_id="bob", epsilon=2.0, epochs=4))
    drop(home, "a2.json", job("a2", epsilon=2.5, epochs=5))
    drop(home, "x.json", job("x", epsilon=90))  # refused: over budget
    run_once(home)
    out = tmp_path / "rep"
    r = cli(home, "report", "--out", str(out))
    assert r.returncode == 0 and r.stdout.decode() == f"wrote {out / 'report.html'}\n", r.stderr.decode()
    page = out / "report.html"
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    assert "<script" not in text  # nothing to run, nothing to fetch

    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == []
    parser = Charts()
    parser.feed(dom.stdout)
    charts = parser.charts
    for account in ("alice", "bob"):
        assert charts[f"account-epsilon:{account}"] == 1 and charts[f"account-delta:{account}"] == 1
    assert charts["dataset:synthetic"] >= 1
    for jid in ("a1", "a2", "b1"):
        assert charts[f"job-loss:{jid}"] == 1 and charts[f"job-epsilon:{jid}"] == 1
    assert charts["job-loss:x"] == 0  # a refused job has no curve, and the page says so
    assert "no training: refused before it ran" in dom.stdout

    shot = tmp_path / "report.png"
    s = chromium(f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars", page.as_uri())
    assert s.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000, s.stderr[-2000:]
    assert console_messages(s.stderr) == []


def test_the_console_check_catches_a_broken_page(tmp_path):
    # The assertion above means something only if a page with an error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>throw new Error('boom')</script></body></html>")
    r = chromium("--dump-dom", bad.as_uri())
    assert any("boom" in m for m in console_messages(r.stderr)), r.stderr[-2000:]


def test_report_json_has_the_page_data(home):
    drop(home, "a1.json", job("a1", epsilon=1.5, epochs=3))
    run_once(home)
    data = json.loads(cli(home, "report", "--json").stdout)
    assert [a["id"] for a in data["accounts"]] == ["alice"]
    assert data["accounts"][0]["points"][-1]["epsilon"] == pytest.approx(1.5)
    assert [d["id"] for d in data["datasets"]] == ["synthetic"]
    j = data["jobs"][0]
    assert j["job_id"] == "a1" and [c["epoch"] for c in j["curve"]] == [1, 2, 3]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", data["generated_at"])

