"""Issue 22 items 8, 9, 12 and 13: what the pages draw is read back from the browser and
measured (canvas text ink boxes against the bands and the canvas, element widths against the
text they hold), with data fed through the real ingest of a real hub, in Chromium."""

import os
import sqlite3
import sys
import time

import pytest
from browser import login, push
from reports import sample_report
from test_browser_pages import fast_hub  # noqa: F401  (fixture)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import demo_feed  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every fillText on a canvas is recorded with the ink box the browser measured for it (device
# pixels, canvas coordinates: actualBoundingBoxLeft/Right already account for textAlign); a
# full clear of the canvas starts its list again, so the list is what the canvas shows now.
RECORD_CANVAS_TEXT = """
(() => {
  const drawn = new WeakMap();
  window.__canvasText = (canvas) => drawn.get(canvas) || [];
  const P = CanvasRenderingContext2D.prototype;
  const fillText = P.fillText, clearRect = P.clearRect;
  P.clearRect = function (x, y, w, h) {
    if (x <= 0 && y <= 0 && w >= this.canvas.width && h >= this.canvas.height) drawn.set(this.canvas, []);
    return clearRect.apply(this, arguments);
  };
  P.fillText = function (text, x, y) {
    const m = this.measureText(text), t = this.getTransform();
    const list = drawn.get(this.canvas) || [];
    list.push({ text: String(text), left: t.a * (x - m.actualBoundingBoxLeft) + t.e,
                right: t.a * (x + m.actualBoundingBoxRight) + t.e, y: t.d * y + t.f,
                top: t.d * (y - m.actualBoundingBoxAscent) + t.f, bottom: t.d * (y + m.actualBoundingBoxDescent) + t.f });
    drawn.set(this.canvas, list);
    return fillText.apply(this, arguments);
  };
})();
"""

OTHER_OWNER = (0x8d, 0x97, 0xa5)


def _server_id(config, name):
    return sqlite3.connect(config.db_path).execute("SELECT id FROM servers WHERE hostname = ?", (name,)).fetchone()[0]


def _rgb(css):
    parts = css[css.index("(") + 1:css.index(")")].split(",")
    return tuple(int(float(p)) for p in parts[:3])


def test_item8_holder_labels_sit_on_their_own_band(fast_hub, page, hub_config):  # noqa: F811
    """Each name written into the holder timeline lies inside a band of that holder's colour:
    the pixels just above the name's ink, across its whole width, are the colour the legend
    gives that user (227e0d8 drew each name ending at its band's start, on the band before)."""
    from playwright.sync_api import expect

    page.add_init_script(RECORD_CANVAS_TEXT)
    demo_feed.run(fast_hub.base_url, hub_config.get("agent.token"), hosts=4, hours=6, interval=60, once=True,
                  log=lambda text: None)
    login(page, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    checked = 0
    for host in ("dgx-a01", "gpu-c01"):
        page.goto(f"{fast_hub.base_url}/servers/{_server_id(hub_config, host)}/history?hours=6")
        expect(page.locator("figure.holders canvas")).to_have_count(1)
        legend = {li.inner_text().strip(): _rgb(li.locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor"))
                  for li in page.locator("figure.holders .owner-legend li").all()}
        result = page.evaluate("""() => {
          const u = charts.find((c) => c.root.parentElement.classList.contains('holders'));
          const px = devicePixelRatio, n = u.scales.y.max;
          const ctx = u.ctx, W = ctx.canvas.width;
          const inPlot = (t) => t.left >= u.bbox.left && t.right <= u.bbox.left + u.bbox.width &&
                                t.y >= u.bbox.top && t.y <= u.bbox.top + u.bbox.height;
          return window.__canvasText(ctx.canvas).filter(inPlot).map((t) => {
            let row = 0;
            for (let r = 0; r < n; r++) if (t.y >= u.valToPos(n - r, 'y', true) && t.y <= u.valToPos(n - r - 1, 'y', true)) row = r;
            const bandTop = u.valToPos(n - row, 'y', true);
            const bandBottom = u.valToPos(n - row - 1, 'y', true);
            // Pixel rows of the band above the ink (below the alert strip at the plot's top) and below it.
            const ys = [];
            for (let y = Math.ceil(bandTop + 2 * px); y < t.top - px; y++) if (y > u.bbox.top + 5 * px) ys.push(y);
            for (let y = Math.ceil(t.bottom + 2 * px); y < bandBottom - 2 * px; y++) ys.push(y);
            const colours = [];
            for (let x = Math.ceil(t.left); x <= Math.floor(t.right); x += Math.max(1, Math.round(px))) {
              colours.push(ys.map((y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3))));
            }
            return { text: t.text, row, colours };
          });
        }""")
        assert result, f"no holder names drawn on {host}"
        for label in result:
            if label["text"].isdigit():
                continue  # an XID marker's code, not a holder
            stem = label["text"].rstrip("…")
            owners = [name for name in legend if name == label["text"] or (label["text"].endswith("…") and name.startswith(stem))]
            colour = legend[owners[0]] if owners else OTHER_OWNER
            # Seams between two cells of one band are anti-aliased a step or two off the colour.
            hits = sum(any(max(abs(a - b) for a, b in zip(c, colour)) <= 12 for c in column) for column in label["colours"])
            assert all(label["colours"]) and hits >= 0.9 * len(label["colours"]), (host, label["text"], label["row"], colour,
                                                                               hits, len(label["colours"]))
            checked += 1
    assert checked >= 4
    assert page.console_errors == []


def test_item12_chart_axis_labels_are_never_clipped(fast_hub, page, hub_config):  # noqa: F811
    """Every label uPlot writes on a history chart (y-axis values such as "95.4 MiB/s" or
    "1000 MiB/s", times, GPU names) lies entirely on its canvas: its measured ink box starts at
    x >= 0 (227e0d8 fixed the y axis at 70 px and cut the first digits off)."""
    from playwright.sync_api import expect

    page.add_init_script(RECORD_CANVAS_TEXT)
    now = time.time()
    for i in range(20):  # a host moving 95-1000 MiB/s: the widest rate labels
        report = sample_report("fat-pipe", gpus=2, processes=1, sample_time=now - 1200 + i * 60)
        report["network"] = {"rx_bytes_per_s": (95.4 + 45 * i) * 1024**2, "tx_bytes_per_s": 999.9 * 1024**2}
        push(fast_hub, hub_config, report)
    login(page, fast_hub.base_url, hub_config.get("auth.username"), hub_config.password)
    page.goto(f"{fast_hub.base_url}/servers/{_server_id(hub_config, 'fat-pipe')}/history?hours=1")
    expect(page.locator("figure.chart canvas").first).to_be_visible()
    page.wait_for_function("() => charts.length >= 6")
    clipped = page.evaluate("""() => charts.flatMap((u) => {
        const title = u.root.parentElement.querySelector('figcaption').textContent;
        return window.__canvasText(u.ctx.canvas).filter((t) => t.left < 0 || t.right > u.ctx.canvas.width)
          .map((t) => [title, t.text, Math.round(t.left), Math.round(t.right), u.ctx.canvas.width]); })""")
    assert clipped == []
    network = page.evaluate("""() => window.__canvasText(charts.find((u) =>
        u.root.parentElement.querySelector('figcaption').textContent === 'Network').ctx.canvas).map((t) => t.text)""")
    assert any(text.endswith("MiB/s") and len(text.split(" ")[0]) >= 3 for text in network), network
    assert page.console_errors == []
