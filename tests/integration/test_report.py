"""Reports from a real short search: content of report.html / report.md, a real browser render, export --trial."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.model_config import read_model_config
from tuner.server import control

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("GREENTUNE_REQUIRE_BROWSER"):
    raise RuntimeError("GREENTUNE_REQUIRE_BROWSER is set but chromium is not installed")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def external_resources(page: str) -> list[str]:
    """src/href attributes of real tags (script bodies are not parsed as tags)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in ("src", "href") and value and not value.startswith(("#", "data:")):
                    found.append(f"{tag} {name}={value}")

    Parser().feed(page)
    return found


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = run_cli(["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "--trials", "4",
                      "-c", "4", "--max-p99-ms", "100", "--idle-seconds", "1", *FAST_FLAGS, "-o", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_html_report_is_self_contained_with_every_section(searched):
    page = (searched / "report.html").read_text()
    summary = json.loads((searched / "summary.json").read_text())
    best = summary["best"]["trial"]
    assert external_resources(page) == []  # plotly embedded: opens offline
    assert "Plotly.newPlot" in page and page.count("Plotly.newPlot") >= 3
    assert f"trial {best}" in page
    assert "mJ per inference" in page and "estimated" in page
    assert "Pareto front" in page and "max p99 100 ms" in page
    assert 'class="sortable"' in page and page.count("<tr class=") == summary["trial_count"]
    for text in ("Provenance", "Triton server", "idle power", "command line", "Search progress"):
        assert text in page
    assert "Parameter importance" in page


def test_markdown_report_with_diff_and_png(searched):
    md = (searched / "report.md").read_text()
    assert md.startswith("## greentune: mlp")
    assert "| trial | config | infer/J (95% CI) |" in md
    assert "Energy source: estimated" in md
    assert "![Pareto front" in md and (searched / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((searched / "summary.json").read_text())
    if summary["best"]["trial"] != summary["baseline"]["trial"]:
        assert "```diff" in md and "+++ chosen/config.pbtxt" in md


def test_report_command_rerenders_from_saved_results(searched):
    (searched / "report.html").unlink()
    result = run_cli(["report", str(searched)])
    assert result.returncode == 0 and (searched / "report.html").exists()
    missing = run_cli(["report", str(searched / "nope")])
    assert missing.returncode == 2 and "no summary.json" in missing.stderr


def test_export_any_trial_loads_and_serves(searched, server):
    result = run_cli(["export", str(searched), "--trial", "1"])
    assert result.returncode == 0, result.stderr[-2000:]
    path = searched / "mlp" / "trial-1" / "config.pbtxt"
    record = json.loads((searched / "trials" / "trial-0001.json").read_text())["trial"]
    config = read_model_config(path)
    if "instance_count" in record["config"]:
        assert config.instance_group[0].count == record["config"]["instance_count"]
    control.load_config(server, "mlp", config)
    bad = run_cli(["export", str(searched), "--trial", "99", "--no-verify"])
    assert bad.returncode == 2 and "--trial 99: no such trial" in bad.stderr
    assert triton_processes() == []


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(searched, tmp_path):
    page = searched / "report.html"
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="main-svg"') >= 3  # plotly drew its SVG plots
    console_errors = [line for line in dom.stderr.splitlines()
                      if "CONSOLE" in line and re.search(r"error|Uncaught", line, re.I)]
    assert console_errors == []
    shot = searched / "report.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                    "--virtual-time-budget=5000", "--window-size=1300,2600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000


XSS = ('<img src=x onerror=alert(1)><img src=x onerror="document.title=\'PWNED\'">'
       '</script><script>document.title="PWNED";document.body.insertAdjacentHTML("beforeend","<p id=pwned></p>")'
       '</script>')


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
def test_hostile_text_in_saved_results_runs_no_script_in_the_report(searched, tmp_path):
    out = tmp_path / "hostile"
    shutil.copytree(searched, out)
    record_path = sorted((out / "trials").glob("trial-*.json"))[-1]
    record = json.loads(record_path.read_text())
    record["trial"]["failure_reason"] = f"model said {XSS}"
    record["trial"]["measurement"] = None
    record_path.write_text(json.dumps(record))
    summary = json.loads((out / "summary.json").read_text())
    summary["ties_with_best"] = [XSS]
    summary["stop_reason"] = XSS
    summary["warnings"] = [XSS]
    summary["environment"]["command_line"] = f"greentune search {XSS}"
    (out / "summary.json").write_text(json.dumps(summary))
    result = run_cli(["report", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    page = (out / "report.html").read_text()
    assert "<img src=x" not in page and "<script>document.title" not in page
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom",
                          (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "PWNED" not in dom.stdout.split("</title>")[0]  # the title was never rewritten
    assert 'id="pwned"' not in dom.stdout and "<img src=\"x\"" not in dom.stdout
    assert "model said &lt;img src=x onerror=alert(1)&gt;" in dom.stdout  # shown as text
    assert dom.stdout.count('class="main-svg"') >= 3  # the page still works: the payload broke no script
    assert not [line for line in dom.stderr.splitlines() if "CONSOLE" in line and re.search(r"Uncaught", line)]
