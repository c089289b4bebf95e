"""The stakeholders' pages: how long until each is interactive in a real browser, and what the plotting library costs.

    .venv/bin/python tests/bench/bench_dashboards.py --settings settings.ini [--runs 3]

On a project `./run_all.sh` filled (the default world; run it on a bigger world's project for that figure): starts
`mlops-nb dashboards` on a free 127.0.0.1 port, opens each page in Debian's headless Chromium and times from the
request to the page's last block being in the DOM and its pickers drawn (the issue's goal: within 5 s at the
default size, 10 s at 1,000,000 customers x 12 months), and on the monitoring page how long a month picked takes to
redraw its section. Then the library choice, side by side in one process: the ROI page's value chart
drawn by matplotlib as an inline PNG (what the pages do) and by plotly as inline HTML+JS (the interactive
alternative), import and render times, and the bytes each adds to a page."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
PICKERS_DRAWN = ("() => { const end = document.querySelector('#mlops-nb-page-end'); return end !== null && "
                 "document.querySelectorAll('.mlops-nb-picked').length >= Number(end.dataset.pickers || 0); }")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def page_times(settings: Path, runs: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlops-nb"), "--settings", str(settings), "dashboards", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2); break
            except OSError:
                if time.time() > deadline: raise TimeoutError("voila did not start")
                time.sleep(0.2)
        out: dict[str, list[float]] = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            for _ in range(runs):
                for name in ("monitoring", "bias", "roi", "governance"):
                    t = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{port}/voila/render/{name}.ipynb")
                    # interactive: every picker's drop-down drawn by the widget manager, with its section
                    page.wait_for_function(PICKERS_DRAWN, timeout=120_000)
                    out.setdefault(name, []).append(time.perf_counter() - t)
                    if name == "monitoring":     # a picked month's section redrawn by the visitor's kernel
                        options = page.eval_on_selector(".widget-dropdown select",
                                                        "s => [...s.options].map(o => o.value)")
                        t = time.perf_counter()
                        page.select_option(".widget-dropdown select", options[-1])
                        page.wait_for_selector(f"[data-choice='{options[-1]}']", state="attached", timeout=60_000)
                        out.setdefault("a month picked", []).append(time.perf_counter() - t)
            browser.close()
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM); proc.wait(timeout=30)


LIBRARY_SCRIPT = r"""
import sys, time, json
lib, settings = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
from mlops_nb.operate import read_snapshot
from mlops_nb.settings import load_settings
from mlops_nb.catalog import TABLE_ROI_MONTHS
roi = read_snapshot(load_settings(settings), TABLE_ROI_MONTHS)
m = roi[roi.scope == "month"]
t1 = time.perf_counter()
if lib == "matplotlib":
    from mlops_nb.blocks import figure_html
    from mlops_nb.dashboards import value_plot
    t2 = time.perf_counter(); html = figure_html(value_plot(roi))
else:
    import plotly.graph_objects as go
    t2 = time.perf_counter()
    fig = go.Figure(go.Bar(x=m.month, y=m.net_value, error_y=dict(array=m.net_upper - m.net_value,
                                                                   arrayminus=m.net_value - m.net_lower)))
    fig.add_scatter(x=m.month, y=m.expected_net, mode="markers")
    html = fig.to_html(full_html=False, include_plotlyjs=True)
t3 = time.perf_counter()
print(json.dumps({"import_s": round(t2 - t1, 3), "render_s": round(t3 - t2, 3), "bytes": len(html)}))
"""


def library_costs(settings: Path) -> dict[str, dict]:
    import json
    out = {}
    for lib in ("matplotlib", "plotly"):
        r = subprocess.run([sys.executable, "-c", LIBRARY_SCRIPT, lib, str(settings)], capture_output=True, text=True,
                           check=True)
        out[lib] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", type=Path, default=Path("settings.ini"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    times = page_times(a.settings.resolve(), a.runs)
    for name, ts in times.items():
        print(f"{name:<11} first {ts[0]:5.2f} s, best {min(ts):5.2f} s, worst {max(ts):5.2f} s over {len(ts)} loads")
    for lib, c in library_costs(a.settings.resolve()).items():
        print(f"{lib:<11} import {c['import_s']:.2f} s, render {c['render_s']:.3f} s, "
              f"{c['bytes'] / 1e3:,.0f} kB in the page")


if __name__ == "__main__":
    main()
