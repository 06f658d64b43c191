"""Headless Chromium for the course website: the README's screenshot of a lecture page, and the browser test."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(url: str, dest: Path, width: int = 1100, height: int = 1400) -> Path:
    """A PNG of ``url`` by headless Chromium (Debian's ``chromium`` package), in a fresh profile."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("no chromium found: apt-get install -y chromium chromium-driver")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peftlab-chromium-") as profile:
        subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={dest}", url], check=True, capture_output=True, timeout=120)
    return dest
