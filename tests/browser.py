"""Headless Chromium for tests that look at pages as a person would (Debian's chromium + Playwright).

Installs Debian's chromium with apt when /usr/bin/chromium is missing (CI runs as root on a
clean machine) and skips, saying why, only when that install fails.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def ensure_chromium() -> str:
    if not Path(CHROMIUM).exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
                subprocess.run(command, check=True, capture_output=True, timeout=900, env=env)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"{CHROMIUM} is missing and `apt-get install -y chromium chromium-driver` failed: {exc}")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is still missing after apt-get install chromium")
    return CHROMIUM
