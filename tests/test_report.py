"""`posttrain report`: a self-contained HTML file that renders in real Chromium, with data escaped."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from browser import CHROMIUM_ARGS, ensure_chromium
from posttrain.cli import main as cli_main
from posttrain.report.html import render_report

XSS = "<script>window.__xss = 1</script>"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A fake single run: metrics with loss, margins and accuracies, results, generations with markup."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: tiny-random\nlearning_rate: 0.001\n")
    rows = [{"step": s, "loss": 1.0 / s, "rewards/margins": 0.1 * s, "rewards/accuracies": min(1.0, 0.5 + 0.05 * s)}
            for s in range(1, 11)] + [{"step": 10, "eval/loss": 0.2}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "results.json").write_text(json.dumps({"run": "x", "metrics": {
        "task/accuracy": {"name": "task/accuracy", "value": 0.75, "kind": "proportion", "n": 20, "ci": [0.53, 0.89]}}}))
    (run / "generations.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": XSS}], "response": XSS}) + "\n")
    return run


def test_report_contains_curves_tables_and_escaped_samples(run_dir):
    page = render_report(run_dir)
    assert page.count("data:image/png;base64,") == 1
    assert "task/accuracy" in page and "[0.53, 0.89]" in page
    assert XSS not in page and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page
    assert "learning_rate: 0.001" in page


def test_report_renders_in_chromium(run_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    executable = ensure_chromium()
    assert cli_main(["report", str(run_dir)]) == 0
    shot = Path(os.environ.get("POSTTRAIN_SCREENSHOTS", tmp_path)) / "report.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto((run_dir / "report.html").resolve().as_uri())
        assert page.title() == "posttrain report: run"
        image = page.locator("img").first
        assert image.evaluate("img => img.complete && img.naturalWidth > 400")  # the plot decoded
        assert page.evaluate("() => window.__xss === undefined")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000


def test_report_of_a_missing_directory_is_one_line(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
