"""`dvc plots show` and `dvc plots diff` pages draw their charts with no network.

DVC's default page loads vega from a CDN; plots_template/template.html carries the scripts
inline. Each test builds a tiny DVC project shaped like the pipeline's plots (DVCLive's per-epoch
curves, a CSV line plot, a confusion matrix, per-class bars, an image), renders it with the real
`dvc plots` commands, and opens the
page in headless Chromium with every host name unresolvable, so it is offline even on a machine
that has a network. A page passes when the console shows no script errors, vega-embed filled
every plot div, and a screenshot shows the lines, the heatmap and the images.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = ROOT / "plots_template"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium: apt-get install chromium"
)

RGB = tuple[int, int, int]
CRIMSON: RGB = (220, 20, 60)
ORANGE: RGB = (255, 140, 0)
# dvc-render colours revisions in this order (dvc_render/vega.py, OPTIONAL_ANCHOR_RANGES).
REV_COLOURS: list[RGB] = [(0x94, 0x5D, 0xD6), (0x13, 0xAD, 0xC7)]
IMAGE_SIZE = (96, 64)

# Plot div ids: dvc-render turns each plot's id into one by replacing '/' and '.' with '_'.
VEGA_DIVS = (
    "dvclive_train_plots_metrics_val_loss_tsv",
    "metrics_plots_steps_csv",
    "dvclive_eval_plots_sklearn_confusion_matrix_json",
    "dvclive_eval_plots_custom_per_class_accuracy_json",
)
IMAGE_DIV = "predictions_grid_png"

DVC_CONFIG = """\
[core]
    analytics = false
[plots]
    html_template = ../plots_template/template.html
"""
# As the pipeline's dvc.yaml declares them (there, stage by stage).
DVC_YAML = """\
plots:
  - dvclive/train/plots/metrics:
      x: step
  - metrics/plots/steps.csv:
      x: step
      y: train_loss
  - dvclive/eval/plots/sklearn/confusion_matrix.json:
      template: confusion
      x: actual
      y: predicted
  - dvclive/eval/plots/custom/per_class_accuracy.json:
      template: fraction_bars
      x: accuracy
      y: class
  - predictions/grid.png
"""
VAL_LOSS_TSV = "step\tval_loss\n1\t2.00\n2\t1.70\n3\t1.40\n4\t1.30\n5\t1.25\n"
STEPS_CSV = "step,train_loss\n100,2.10\n200,1.60\n300,1.20\n400,0.90\n500,0.70\n"
PER_CLASS = (
    '[{"class": "cat", "accuracy": 0.6}, {"class": "dog", "accuracy": 0.7},'
    ' {"class": "ship", "accuracy": 0.8}]'
)


def run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def dvc(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def git(*args: str, cwd: Path) -> str:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd)


def write_confusion(path: Path) -> None:
    """DVCLive's format: one {"actual", "predicted"} row per test image."""
    classes = ("cat", "dog", "ship")
    rows = []
    for i in range(60):
        actual = classes[i % 3]
        # Two in three right, the rest spread over the other classes: a visible diagonal.
        predicted = actual if i % 9 < 6 else classes[(i + i // 9) % 3]
        rows.append({"actual": actual, "predicted": predicted})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed git + DVC project whose .dvc/config points at a copy of our template."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")  # `dvc init` would report before the config
    repo = tmp_path / "project"
    (repo / "metrics" / "plots").mkdir(parents=True)
    (repo / "predictions").mkdir()
    git("init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    # The real project's config: DVC resolves a relative html_template against .dvc/.
    (repo / ".dvc" / "config").write_text(DVC_CONFIG)
    shutil.copytree(TEMPLATE_DIR, repo / "plots_template", ignore=shutil.ignore_patterns("vendor"))
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # DVC's own template folder

    (repo / "dvc.yaml").write_text(DVC_YAML)
    live_metrics = repo / "dvclive" / "train" / "plots" / "metrics"
    live_metrics.mkdir(parents=True)
    (live_metrics / "val_loss.tsv").write_text(VAL_LOSS_TSV)
    (repo / "metrics" / "plots" / "steps.csv").write_text(STEPS_CSV)
    write_confusion(repo / "dvclive" / "eval" / "plots" / "sklearn" / "confusion_matrix.json")
    per_class = repo / "dvclive" / "eval" / "plots" / "custom" / "per_class_accuracy.json"
    per_class.parent.mkdir(parents=True)
    per_class.write_text(PER_CLASS)
    Image.new("RGB", IMAGE_SIZE, CRIMSON).save(repo / "predictions" / "grid.png")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "plots", cwd=repo)
    return repo


def open_page(page: Path, workdir: Path) -> tuple[str, str, np.ndarray]:
    """Load `page` offline in headless Chromium: its DOM after the scripts ran, log, screenshot."""
    assert CHROMIUM is not None
    screenshot = workdir / "screenshot.png"
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'chromium-profile'}",
        # No host name resolves: a page that needs a CDN fails here as it would air-gapped.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=5000",  # let vega-embed's async rendering finish
        "--window-size=1400,2000",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        f"--screenshot={screenshot}",
        page.as_uri(),
    ]
    result = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"chromium failed:\n{result.stderr[-3000:]}"
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    return result.stdout, result.stderr, pixels


def page_problems(
    page: Path, workdir: Path, line_colours: list[RGB], image_colours: list[RGB]
) -> list[str]:
    """What is wrong with the page as Chromium draws it offline; empty when every plot shows."""
    dom, log, pixels = open_page(page, workdir)
    problems = []

    # Console messages reach the log as `INFO:CONSOLE(...)] "message"`; vega's own errors
    # start with "ERROR", the browser's with "Uncaught".
    for line in log.splitlines():
        if ":CONSOLE" in line and ("Uncaught" in line or '"ERROR' in line):
            problems.append(f"console: {line.split('] ', 1)[-1]}")

    # vega-embed marks the div it fills with class "vega-embed" and draws into a canvas
    # (its default renderer) or svg with class "marks".
    starts = {div: dom.find(f'<div id="{div}"') for div in (*VEGA_DIVS, IMAGE_DIV)}
    for div, start in starts.items():
        if start < 0:
            problems.append(f"no <div id={div!r}> in the page")
            continue
        end = min((s for s in starts.values() if s > start), default=len(dom))
        html = dom[start:end]
        if div == IMAGE_DIV:
            if "<img src=" not in html:
                problems.append(f"{div}: no <img>")
        elif 'class="vega-embed' not in html.split(">", 1)[0] or 'class="marks"' not in html:
            problems.append(f"{div}: vega-embed drew nothing into it")

    def near(colour: RGB, tolerance: int) -> int:
        return int((np.abs(pixels - colour).max(axis=-1) <= tolerance).sum())

    # Lines are anti-aliased and overlap, hence the tolerance; images are drawn 1:1.
    for colour in line_colours:
        if near(colour, 40) < 50:
            problems.append(f"screenshot: no lines in {colour}")
    for colour in image_colours:
        if near(colour, 0) < IMAGE_SIZE[0] * IMAGE_SIZE[1]:
            problems.append(f"screenshot: image in {colour} missing")
    # The heatmap is the only large coloured area besides the images: its 9 cells per
    # revision cover tens of thousands of pixels, the lines and form controls a few thousand.
    coloured = int(((pixels.max(axis=-1) - pixels.min(axis=-1)) >= 40).sum())
    heatmap = coloured - sum(near(c, 40) for c in line_colours + image_colours)
    if heatmap < 20_000:
        problems.append(f"screenshot: no confusion heatmap ({heatmap} coloured pixels)")
    return problems


def test_template_matches_vendored_builds():
    run([sys.executable, str(TEMPLATE_DIR / "build_template.py"), "--check"], ROOT)


@needs_chromium
def test_plots_show_draws_offline(project: Path, tmp_path: Path):
    out = dvc("plots", "show", cwd=project)  # into dvc_plots/, DVC's default
    page = project / "dvc_plots" / "index.html"
    assert page.as_uri() in out
    problems = page_problems(page, tmp_path, REV_COLOURS[:1], [CRIMSON])
    assert not problems, "\n".join([*problems, f"screenshot: {tmp_path / 'screenshot.png'}"])


@needs_chromium
def test_plots_diff_draws_offline(project: Path, tmp_path: Path):
    with (project / "dvclive" / "train" / "plots" / "metrics" / "val_loss.tsv").open("a") as f:
        f.write("6\t1.24\n")
    with (project / "metrics" / "plots" / "steps.csv").open("a") as f:
        f.write("600,0.60\n")
    Image.new("RGB", IMAGE_SIZE, ORANGE).save(project / "predictions" / "grid.png")
    # HEAD against the workspace, into a deeper folder than DVC's default.
    dvc("plots", "diff", "HEAD", "-o", "reports/plots_diff", cwd=project)
    page = project / "reports" / "plots_diff" / "index.html"
    problems = page_problems(page, tmp_path, REV_COLOURS, [CRIMSON, ORANGE])
    assert not problems, "\n".join([*problems, f"screenshot: {tmp_path / 'screenshot.png'}"])


@needs_chromium
def test_default_cdn_page_draws_nothing_offline(project: Path, tmp_path: Path):
    """The check above is not vacuous: DVC's own page, which loads vega from a CDN, fails it."""
    from dvc_render.html import PAGE_HTML

    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML)
    dvc("plots", "show", "--html-template", str(default), "-o", "cdn_plots", cwd=project)
    page = project / "cdn_plots" / "index.html"
    problems = page_problems(page, tmp_path, REV_COLOURS[:1], [CRIMSON])
    assert any("vegaEmbed is not defined" in p for p in problems), problems
    assert any("vega-embed drew nothing" in p for p in problems), problems
    assert any("heatmap" in p for p in problems), problems
