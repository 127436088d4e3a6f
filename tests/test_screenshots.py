"""scripts/screenshots.py renders the README's screenshots from a (small) demo, so it cannot rot."""

import os
import struct
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import demo_feed  # noqa: E402
import screenshots  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _png_size(path):
    with open(path, "rb") as fp:
        head = fp.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_screenshots_render_from_the_demo(browser, hub_process, hub_config, tmp_path):
    demo_feed.run(hub_process.base_url, hub_config.get("agent.token"), hosts=6, hours=1, once=True,
                  log=lambda text: None)
    paths = screenshots.render(hub_process.base_url, hub_config.get("auth.username"), hub_config.password,
                               str(tmp_path), browser=browser)
    assert sorted(os.path.basename(p) for p in paths) == sorted(screenshots.SHOTS)
    sizes = {os.path.basename(p): _png_size(p) for p in paths}
    assert sizes["fleet-dark.png"] == sizes["fleet-light.png"] == (1440, 900)
    assert sizes["phone.png"] == (390, 844)
    assert sizes["history.png"][0] == 1440
    # Not blank: a rendered page compresses far worse than a flat colour.
    assert all(os.path.getsize(p) > 20_000 for p in paths), {p: os.path.getsize(p) for p in paths}


def test_readme_shows_the_rendered_screenshots():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for name in ("fleet-dark.png", "fleet-light.png", "phone.png"):
        assert f"docs/screenshots/{name}" in readme, name
        assert os.path.exists(os.path.join(ROOT, "docs", "screenshots", name)), name
