"""The HTML report: self-contained, escaped, and rendered by headless Chromium without console errors."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _evaluate_support import save_lenet, write_run

from salmap.evaluation.config import load_config
from salmap.evaluation.report import render
from salmap.evaluation.runner import evaluate

EVIL = '<script>console.error("injected")</script><img src=x onerror=alert(1)>'
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
# after load: how many images there are and how many failed to decode (a data: URI that is not a PNG)
PROBE = """<script>window.addEventListener("load", () => {
  const bad = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  console.log("PROBE images=" + document.images.length + " broken=" + bad +
              " summary_rows=" + document.querySelectorAll("#summary tbody tr").length);
});</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    lenet = save_lenet(root / "lenet")
    run = write_run(
        root / "run.yaml", name=EVIL, output="out", batch_size=4, data={"name": "mnist-sample", "num": 8},
        models=[{"name": "lenet <b>bold</b>", "path": str(lenet), "defense": "&amp; 'quoted' \"twice\""}],
        attacks=[{"attack": "fgsm", "name": "fgsm </td></tr></table>", "params": {"eps": 0.3}},
                 {"attack": "fgsm", "name": "grid", "targets": "all", "params": {"eps": 0.3}}],
        explanations=[{"explainer": "gradient"}], figures={"samples": 3},
    )
    evaluate(load_config(run), progress=False)
    return root / "out" / "report.html"


def test_report_is_self_contained_and_escaped(report: Path) -> None:
    text = report.read_text()
    summary = json.loads((report.parent / "summary.json").read_text())
    assert "<script" not in text.lower() and "<img src=x" not in text
    assert "&lt;script&gt;console.error(&quot;injected&quot;)&lt;/script&gt;" in text
    assert "lenet &lt;b&gt;bold&lt;/b&gt;" in text and "fgsm &lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in text
    assert "&amp;amp; &#x27;quoted&#x27; &quot;twice&quot;" in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == len(summary["figures"]) >= 4  # 2 grids, pair heatmap, budget curves, explanation
    for src in sources:  # every image is embedded, nothing is fetched
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(?!data:)', text)
    for heading in ("Summary", "Models", "Explanations", "Figures", "Timings", "Versions", "Settings"):
        assert f"<h2>{heading}</h2>" in text
    assert summary["versions"]["torch"] in text


def test_render_escapes_every_table_cell() -> None:
    html = render({"name": "n", "results": [{"model": "<i>m</i>", "attack": "a&b", "params": {"k": "<v>"}}],
                   "models": [], "settings": {"name": "<x>"}}, Path("."))
    assert "&lt;i&gt;m&lt;/i&gt;" in html and "a&amp;b" in html and "&lt;x&gt;" in html
    assert "<i>" not in html and "<x>" not in html


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120,
    )


def console_messages(stderr: str) -> list[str]:
    return re.findall(r":CONSOLE[^\]]*\] (.*)", stderr)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    # the checker notices console errors: a page with an error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('planted'); missing();</script></body></html>")
    planted = console_messages(chromium(["--dump-dom", bad.as_uri()], tmp_path / "p0").stderr)
    assert any("planted" in m for m in planted) and any("missing is not defined" in m for m in planted)

    shot = tmp_path / "report.png"
    done = chromium(["--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()], tmp_path / "p1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000

    dom = chromium(["--dump-dom", report.as_uri()], tmp_path / "p2")
    assert console_messages(dom.stderr) == []
    assert '<table id="summary">' in dom.stdout and "fgsm &lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in dom.stdout
    assert "<script" not in dom.stdout.lower()  # the evil name stayed text

    # a copy with a probe script: every image decodes and the summary table has one row per result
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    messages = console_messages(chromium(["--dump-dom", probed.as_uri()], tmp_path / "p3").stderr)
    assert len(messages) == 1, messages
    found = dict(re.findall(r"(\w+)=(\d+)", messages[0]))
    summary = json.loads((report.parent / "summary.json").read_text())
    assert int(found["images"]) == len(summary["figures"]) and int(found["broken"]) == 0
    assert int(found["summary_rows"]) == len(summary["results"]) == 2


def test_budget_curve_known_answer() -> None:
    import torch

    from salmap.metrics import budget_curve

    distortion = torch.tensor([0.1, 0.3, 0.2, 0.05])
    success = torch.tensor([True, True, False, True])
    # failures never count, whatever their distortion; a success counts from its own distortion on
    curve = budget_curve(distortion, success, torch.tensor([0.0, 0.05, 0.1, 0.29, 0.3, 1.0]))
    assert curve.tolist() == [0.0, 0.25, 0.5, 0.5, 0.75, 0.75]


def test_figures_write_pngs(tmp_path: Path) -> None:
    import torch

    from salmap.plot import explanation_overlay, pair_heatmap, source_target_grid

    x = torch.rand(3, 1, 8, 8)
    adv = {(s, t): torch.rand(1, 8, 8) for s in range(3) for t in range(3) if s != t}
    won = {key: key != (0, 1) for key in adv}
    rates = torch.tensor([[float("nan"), 0.5, 1.0], [0.0, float("nan"), 0.25], [1.0, 1.0, float("nan")]])
    for path in (source_target_grid(x, adv, tmp_path / "grid.png", ["a", "b", "c"], won),
                 pair_heatmap(rates, tmp_path / "pairs.png", ["a", "b", "c"]),
                 explanation_overlay(x, torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2]), tmp_path / "e.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
