"""Open optuna-dashboard on a compare run in headless Chromium, read what it shows, save screenshots.

Usage: python benchmarks/dashboard_screenshot.py [--storage sqlite:///bench-compare.db] [--study NAME]

Starts the real optuna-dashboard server on loopback over ``--storage`` (saving the report's
figures and notes into its studies first), opens it in Debian's Chromium through playwright
(``/usr/bin/chromium``; never a downloaded browser) and writes benchmarks/results/dashboard.png
(the study page: note link, saved plotly figures) and dashboard-trial.png (a trial's user
attrs), plus dashboard.md saying what was seen. With an empty or missing storage it first runs
a small ``optuna-deelbo compare`` (digits, N = 50, deelbo + 2 TPE trials, 300 steps each) into it. tests/test_browser.py
calls :func:`capture` on its own tiny run, so the test and this script share one code path.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from optuna_deelbo.tuning import attrs as A

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import RESULTS, RunRecord, repo_relative

__all__ = ["CHROMIUM", "DashboardView", "capture", "main"]

#: Debian's Chromium (apt-get install chromium); playwright drives it, it never downloads one.
CHROMIUM = "/usr/bin/chromium"
#: As root in a container there is no sandbox; the network flags stop calls home on a closed network.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: The run made when the storage has no study (about a minute on a CPU): 2 TPE trials, but the default 300
#: steps per trial, so each DE-ELBo trial logs as many steps (``learned:trace``) as a real run's.
SMALL_COMPARE = (
    "--strategies",
    "deelbo,tpe",
    "--tpe-trials",
    "2",
    "--n-train",
    "50",
    "--report",
    "",
    "--no-progress",
)


@dataclass
class DashboardView:
    """What the browser found, read from the rendered pages (not from the server's JSON).

    Attributes:
        study_names: names listed on the dashboard's home page.
        figure_titles: titles of the plotly figures drawn on the study page (the dashboard's
            own charts have none; the saved ones do).
        trial_attrs: user attr keys shown on the trials page.
        note: text of the study's note page.
        screenshots: the PNG files written.
        widths: each screenshot's page width in CSS px (the document's scroll width), as screenshots.
    """

    study_names: list[str]
    figure_titles: list[str]
    trial_attrs: list[str]
    note: str
    screenshots: list[Path] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)


def capture(base_url: str, study_name: str, out_dir: Path, *, timeout_ms: float = 20_000) -> DashboardView:
    """Browse a running dashboard: home page, ``study_name``'s page, its trials and its note.

    Writes ``dashboard.png`` (study page, full height) and ``dashboard-trial.png`` (trials page)
    into ``out_dir``. Waits up to ``timeout_ms`` for each page; a figure that never renders is
    simply absent from :attr:`DashboardView.figure_titles`.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base_url}/dashboard", wait_until="networkidle")
            page.get_by_text(study_name, exact=False).first.wait_for(timeout=timeout_ms)
            names = re.findall(r"^\d+\. (.+)$", page.inner_text("body"), re.M)

            page.get_by_text(study_name, exact=False).first.click()
            page.wait_for_url(re.compile(r"/dashboard/studies/\d+$"), timeout=timeout_ms)
            study_url = page.url
            try:
                page.locator("text.gtitle").first.wait_for(timeout=timeout_ms)
                page.wait_for_timeout(500)  # let every figure finish drawing
            except PlaywrightTimeout:
                pass
            titles = [t.strip() for t in page.locator("text.gtitle").all_text_contents()]
            shots = [out_dir / "dashboard.png"]
            page.screenshot(path=str(shots[0]), full_page=True)
            widths = [int(page.evaluate("document.documentElement.scrollWidth"))]

            page.goto(f"{study_url}/trials", wait_until="networkidle")
            with contextlib.suppress(PlaywrightTimeout):
                page.get_by_text("User Attributes").first.wait_for(timeout=timeout_ms)
            attrs = sorted(set(re.findall(r"^([\w-]+:[\w-]+|mode)\b", page.inner_text("body"), re.M)))
            shots.append(out_dir / "dashboard-trial.png")
            page.screenshot(path=str(shots[1]), full_page=True)
            widths.append(int(page.evaluate("document.documentElement.scrollWidth")))

            page.goto(f"{study_url}/note", wait_until="networkidle")
            with contextlib.suppress(PlaywrightTimeout):
                page.get_by_text("What this study is").first.wait_for(timeout=timeout_ms)
            note = page.inner_text("body")
        finally:
            browser.close()
    return DashboardView(names, titles, attrs, note, shots, widths)


def _ensure_studies(url: str) -> None:
    from optuna_deelbo.cli import main as cli

    storage = optuna.storages.RDBStorage(url)
    if not optuna.get_all_study_summaries(storage) and cli(["compare", "--storage", url, *SMALL_COMPARE]) != 0:
        raise SystemExit("the compare run failed")


def main() -> None:
    record = RunRecord.start()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default="sqlite:///bench-compare.db")
    parser.add_argument("--study", default=None, help="study to open (default: the first DE-ELBo study)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()

    from optuna_deelbo.report import save_storage_to_dashboard, serve_dashboard

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _ensure_studies(args.storage)
    storage = optuna.storages.RDBStorage(args.storage)
    save_storage_to_dashboard(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    study = args.study or next((n for n in names if n.endswith("/deelbo")), names[0])
    out_dir = Path(args.out_dir)
    with serve_dashboard(args.storage) as base:
        view = capture(base, study, out_dir)
    learned = [a for a in view.trial_attrs if a.startswith("learned:")]
    opened = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    trace_steps = max((len(A.series(t, A.LEARNED_TRACE) or ()) for t in opened), default=0)
    trace_shown = any(a == A.LEARNED_TRACE for a in view.trial_attrs)
    text = f"""# optuna-dashboard in headless Chromium

{record.header()}
- storage: `{repo_relative(args.storage)}`; opened study `{study}`
- browser: Debian Chromium (`{CHROMIUM}`) through playwright, headless, {", ".join(CHROMIUM_ARGS)}

Seen in the rendered pages (read from the page text and the plotly SVG, not from the JSON API):

- study list ({len(view.study_names)}): {", ".join(f"`{n}`" for n in view.study_names)}
- saved plotly figures on the study page: {"; ".join(view.figure_titles) or "NONE"}
- a trial's `learned:*` user attrs: {", ".join(f"`{a}`" for a in learned) or "NONE"}
- study note present: {"yes" if "What this study is" in view.note else "NO"}; it starts with the best trial's learned
  values: {"yes" if "Learned by the best trial" in view.note else "NO"}
- page width (CSS px, viewport 1400): study page {view.widths[0]:,}, trials page {view.widths[1]:,} (issue 35's goal:
  under 2,000; a user attr is shown on one line, so a long one widens the trials page: `learned:trace`, here
  {trace_steps} logged steps per trial, is a trial system attr since 0.4, {"yet SHOWN" if trace_shown else "not shown"}
  among the user attrs, and drawn in the study page's trajectories figure)

Screenshots: [dashboard.png](dashboard.png) (study page), [dashboard-trial.png](dashboard-trial.png) (trials page).
"""
    (out_dir / "dashboard.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
