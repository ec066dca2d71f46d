"""The report: tables from a real MLflow sqlite store, escaping, Markdown, and a real browser.

Runs are written through :class:`lafite.tracking.Tracker` exactly as the runner writes them
(parent run, child runs tagged with row/scale/seed/hash, metrics at kimg steps, a sample grid
in the run folder), so the report reads the same store layout as after ``lafite-repro run``.
"""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from lafite import spec as spec_mod
from lafite.report import build_report
from lafite.report.tables import summarise, to_markdown
from lafite.spec import Spec

CHROMIUM = Path("/usr/bin/chromium")


# -- a store as the runner leaves it -------------------------------------------------------------


def write_png(path: Path, pixels: np.ndarray) -> None:
    """A uint8 HxWx3 image as PNG (no PIL needed, keeps the helper dependency-free)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def fill_store(workspace, spec: Spec, scale: str, seeds: int = 1, rows: list[str] | None = None,
               captions: list[str] | None = None, history: int = 3, value_of=None) -> list[str]:
    """Finished child runs for ``rows`` (default: every trainable row), one per seed."""
    from lafite.tracking import Tracker

    tracker = Tracker(workspace)
    parent = tracker.parent_run(spec.id, scale)
    rng = np.random.default_rng(0)
    run_ids = []
    planned = spec_mod.plan(spec, scale, seeds=seeds, rows=rows)
    for index, run in enumerate(planned):
        run_dir = workspace.runs_dir / run.hash
        logger = tracker.start_child(
            spec.id, parent, row=run.row.name, scale=scale, seed=run.seed, config_hash=run.hash,
            config={"train": {"seed": run.seed}}, flat_params={"train.kimg": run.config.train.kimg},
            extra_tags={"lafite.run_dir": str(run_dir)},
        )
        for step in range(1, history + 1):
            kimg = step * 0.5
            logger.log_metrics(kimg, {"G/total": 2.0 / step + rng.random() * 0.1,
                                      "D/total": 1.0 + 0.1 * step})
        values = {}
        for position, metric in enumerate(spec.metrics):
            value = (value_of(run.row.name, metric.name, run.seed) if value_of
                     else 1.0 + index * 0.1 + position + run.seed * 0.01)
            if value is None:  # never logged
                continue
            key = metric.name
            if metric.name == "R-precision":
                key = "R-precision - training-signal diagnostic"
            values[key] = value
        logger.log_metrics(history * 0.5, values)
        grid = rng.integers(0, 255, size=(16, 64, 3), dtype=np.uint8)
        write_png(run_dir / "samples" / f"fakes_{history * 0.5:09.3f}kimg.png", grid)
        (run_dir / "samples" / "captions.txt").write_text(
            "".join(f"columns {2 * i}-{2 * i + 1}: {c}\n"
                    for i, c in enumerate(captions or ["a red circle on grass"])))
        logger.close()
        run_ids.append(logger.run_id)
    tracker.finish_parent(parent, "FINISHED")
    return run_ids


@pytest.fixture(scope="module")
def table5() -> Spec:
    return spec_mod.find("table5")


def _evil_spec(folder: Path, table5: Spec) -> Spec:
    """Table 5 with a row name holding HTML (a spec is a file anybody may edit)."""
    text = (Path(table5.path).read_text()
            .replace("id: table5", "id: evil")
            .replace("name: LAFITE_G\n", "name: \"<b>LAFITE_G</b>\"\n"))
    (folder / "evil.yaml").write_text(text)
    return spec_mod.load(folder / "evil.yaml")


def _figure7_spec(folder: Path, table5: Spec) -> Spec:
    """A Figure 7-like spec: rows on an x axis, XMC-GAN as a paper-only reference line."""
    table5_text = Path(table5.path).read_text()
    text = (table5_text.split("\nrows:")[0]
            .replace("id: table5", "id: figure7")
            .replace('paper: {table: 5, section: "4.5"}', "paper: {figure: 7}")
            + "\nx_axis: {label: image-text pairs, unit: '%'}\n"
            "rows:\n"
            "  - {name: XMC-GAN, reference: true, paper: {IS: 30.45, FID-0: 9.33}}\n"
            "  - {name: LAFITE 10%, x: 10, series: LAFITE, set: {loss.con_g: true},"
            " paper: {IS: 27.0, FID-0: 12.0}}\n"
            "  - {name: LAFITE 50%, x: 50, series: LAFITE, set: {loss.con_g: false},"
            " paper: {IS: 31.0, FID-0: 9.0}}\n"
            + "scales:" + table5_text.split("\nscales:")[1])
    (folder / "figure7.yaml").write_text(text)
    return spec_mod.load(folder / "figure7.yaml")


EVIL_CAPTION = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _mini_value(row: str, metric: str, seed: int) -> float:
    return {"IS": 3.0 + seed, "FID-0": 40.0 - 2 * seed}.get(metric, 0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory, table5):
    """One sqlite store for the module (creating one runs MLflow's migrations: seconds):
    Table 5 at smoke scale, all rows, 2 seeds for the first two rows and 1 for the others;
    LAFITE_G alone at mini scale, 3 seeds;
    a spec with HTML in a row name and a caption; a Figure 7-like spec."""
    from lafite.workspace import Workspace

    root = tmp_path_factory.mktemp("store")
    workspace = Workspace.resolve(root / "ws")
    fill_store(workspace, table5, "smoke", seeds=2, rows=["LAFITE_G", "LAFITE_G +L_ConG"])
    fill_store(workspace, table5, "smoke", seeds=1, rows=[r.name for r in table5.rows[2:]])
    fill_store(workspace, table5, "mini", seeds=3, rows=["LAFITE_G"], value_of=_mini_value)
    evil = _evil_spec(root, table5)
    fill_store(workspace, evil, "smoke", rows=["<b>LAFITE_G</b>"], captions=[EVIL_CAPTION])
    figure7 = _figure7_spec(root, table5)
    fill_store(workspace, figure7, "smoke")
    _write_study(workspace.root / "tuning" / "tau-smoke")
    return {"workspace": workspace, "evil": evil, "figure7": figure7}


def _write_study(folder: Path) -> None:
    """The summary files ``lafite-repro tune`` leaves for a study (Optuna's trials table)."""
    folder.mkdir(parents=True)
    lines = ["number,value,state,params_loss.tau"]
    for i, tau in enumerate([0.1, 0.3, 0.5, 1.0, 2.0]):
        lines.append(f"{i},{40 - 10 * tau + (tau - 0.5) ** 2 * 8},COMPLETE,{tau}")
    lines.append("5,,PRUNED,0.7")
    (folder / "trials.csv").write_text("\n".join(lines) + "\n")
    (folder / "best.yaml").write_text("objectives: [FID-0]\ndirections: [minimize]\n")


@pytest.fixture(scope="module")
def table5_html(store, tmp_path_factory, table5) -> Path:
    out = tmp_path_factory.mktemp("reports")
    written = build_report(store["workspace"], scale="smoke", out_dir=out, specs=[table5])
    assert written == [out / "index.html", out / "table5.html"]
    return out / "table5.html"


# -- tests -------------------------------------------------------------------------------------


def _result_rows(page: str) -> list[tuple[str, str]]:
    """(row name, text of its cells) of every results table on the page, in order."""
    found = []
    for body in page.split('<table class="results">')[1:]:
        body = body.split("</table>", 1)[0]
        for name, cells in re.findall(r'<tr class="[^"]*" data-row="([^"]+)">(.*?)</tr>', body, flags=re.S):
            found.append((html.unescape(name), html.unescape(re.sub(r"<[^>]+>", " ", cells))))
    return found


def test_table5_page_holds_every_row_with_paper_and_reproduced_numbers(table5_html, table5):
    page = table5_html.read_text()
    rows = _result_rows(page)
    assert [name for name, _ in rows] == [r.name for r in table5.rows]
    assert len(rows) == 8
    for i, (row, (_, text)) in enumerate(zip(table5.rows, rows)):
        for metric, number in row.paper.items():
            assert f"{number:.2f}" in text, (row.name, metric)
        assert text.count(" n=2" if i < 2 else " n=1") == 6  # every metric reproduced
        assert ("±" in text) == (i < 2)  # a spread over seeds where there are several
        assert "not run" not in text
    assert "Not the paper's metrics" in page and "world analogue" in page
    assert "training-signal diagnostic" in page  # R-precision scored by the training CLIP
    assert "Does the paper's ordering hold?" in page
    assert page.count("data:image/png;base64,") >= 1 + 8 + 2  # curves, 8 sample grids, study
    assert "<script" not in page  # offline and inert: no scripts at all
    assert not re.search(r'(src|href)="https?://', page)  # nothing fetched from the network
    index = (table5_html.parent / "index.html").read_text()
    assert 'href="table5.html"' in index and "smoke: 8/8 rows run" in index


def test_every_scale_with_runs_is_shown_and_not_run_rows_give_the_command(store, tmp_path, table5):
    out = tmp_path / "all"
    build_report(store["workspace"], out_dir=out, specs=[table5])
    page = (out / "table5.html").read_text()
    assert 'id="scale-mini"' in page and 'id="scale-smoke"' in page
    assert page.index('id="scale-mini"') < page.index('id="scale-smoke"')
    mini = _result_rows(page)[:8]
    assert "n=3" in mini[0][1]
    assert all("not run" in text for _, text in mini[1:])
    assert "lafite-repro run table5 --scale mini --rows &#39;LAFITE_G +L_ConG&#39;" in page


def test_reproduced_numbers_are_mean_and_std_over_seeds(store, table5):
    from lafite.tracking import Tracker

    frame = Tracker(store["workspace"]).runs_frame("table5", "mini")
    table = summarise(table5, frame, "mini")
    first = table.rows[0]
    assert first.cells["IS"].mean == pytest.approx(4.0)
    assert first.cells["IS"].spread == pytest.approx(1.0)
    assert first.cells["IS"].n == 3
    assert first.cells["FID-0"].mean == pytest.approx(38.0)
    assert first.cells["SOA-C"].mean == pytest.approx(50.0)  # fraction shown in percent
    assert first.cells["IS"].diff is None  # no difference to the paper at world scale
    assert [r.status for r in table.rows[1:]] == ["not run"] * 7
    assert table.rows[1].command == "lafite-repro run table5 --scale mini --rows 'LAFITE_G +L_ConG'"


def test_ordering_agreement_per_metric(table5):
    import pandas as pd

    # Reproduced IS in exactly the paper's order, FID reversed.
    records = []
    for i, row in enumerate(table5.trainable_rows):
        records.append({"run_id": f"r{i}", "row": row.name, "seed": 0, "scale": "paper",
                        "metrics.IS": row.paper["IS"] + 1.0,
                        "metrics.FID-0": 100.0 - row.paper["FID-0"]})
    table = summarise(table5, pd.DataFrame.from_records(records), "paper")
    by_metric = {a.metric: a for a in table.agreements}
    assert by_metric["IS"].kendall_tau == pytest.approx(1.0)
    assert by_metric["IS"].verdict == "paper's ordering holds"
    assert by_metric["IS"].paper_best == by_metric["IS"].our_best == "LAFITE_G +L_ConG +L_ConD"
    assert by_metric["FID-0"].kendall_tau == pytest.approx(-1.0)
    assert by_metric["FID-0"].verdict == "reversed"
    assert table.rows[0].cells["IS"].diff == pytest.approx(1.0)  # paper scale: Δ shown
    assert "SOA-C" not in by_metric  # no reproduced SOA: nothing to compare


def test_script_in_caption_and_row_name_is_shown_as_text(store, tmp_path):
    out = tmp_path / "reports"
    build_report(store["workspace"], out_dir=out, specs=[store["evil"]])
    page = (out / "evil.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page and "<b>LAFITE_G</b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page  # the caption, as text
    assert "&lt;b&gt;LAFITE_G&lt;/b&gt;" in page


def test_markdown_tables_and_not_run_commands(store, tmp_path, table5):
    out = tmp_path / "md"
    written = build_report(store["workspace"], scale="mini", out_dir=out, fmt="markdown",
                           specs=[table5])
    assert [p.name for p in written] == ["index.md", "table5.md"]
    text = (out / "table5.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| LAFITE")]
    assert len(lines) == 8
    assert lines[0].startswith("| LAFITE_G | 14.79 | 4.00 ± 1.00 (n=3) | 33.03 | 38.00 ± 2.00 (n=3) |")
    assert lines[1].startswith("| LAFITE_G +L_ConG | 17.78 | not run | 29.65 | not run |")
    assert "- LAFITE_G +L_ConG: `lafite-repro run table5 --scale mini --rows 'LAFITE_G +L_ConG'`" in text
    assert "built-in world" in text


def test_report_without_any_run_shows_paper_numbers_and_commands(workspace, tmp_path, table5):
    out = tmp_path / "reports"
    build_report(workspace, out_dir=out, specs=[table5])
    page = (out / "table5.html").read_text()
    assert page.count('<td class="notrun">not run</td>') == 8 * 6
    assert "lafite-repro run table5 --scale mini --rows LAFITE_G" in page
    assert "33.03" in page
    assert not (workspace.root / "mlflow.db").exists()  # reading created no empty store


def test_figure_spec_draws_the_x_axis_analogue_and_reference_line(store, tmp_path):
    out = tmp_path / "reports"
    build_report(store["workspace"], out_dir=out, specs=[store["figure7"]])
    page = (out / "figure7.html").read_text()
    assert "Figure 7 analogue" in page
    assert "XMC-GAN" in page and "paper only" in page and "30.45" in page


def test_tuning_study_of_the_spec_is_plotted(table5_html):
    page = table5_html.read_text()
    study = page.split("<h2>Tuning studies</h2>", 1)[1]
    assert "Study tau-smoke (smoke scale)" in study
    assert "5 of 6 trials complete" in study and "FID-0" in study
    assert study.count("data:image/png;base64,") == 2  # optimisation history, objective vs tau
    assert "<code>loss.tau=1.0</code>" in study  # the lowest FID of the five


def test_bad_format_is_a_user_error(workspace, tmp_path, table5):
    from lafite.errors import UserError

    with pytest.raises(UserError, match="--format"):
        build_report(workspace, out_dir=tmp_path, fmt="pdf", specs=[table5])


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent "
                    "(Debian package 'chromium'; .ci/run installs it)")
def test_page_renders_in_headless_chromium(table5_html, tmp_path, table5):
    page = table5_html.resolve()
    shot = tmp_path / "shot.png"
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1000, 1400)
    assert pixels.std() > 10, "the screenshot is blank"
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    rendered = re.findall(r'data-row="([^"]+)"', dom)
    assert [html.unescape(r) for r in rendered] == [r.name for r in table5.rows]
    assert "Does the paper's ordering hold?" in html.unescape(dom)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_rows_link_to_the_mlflow_ui_only_for_a_tracking_server():
    from types import SimpleNamespace

    from lafite.report.data import run_url

    server = SimpleNamespace(uri="http://127.0.0.1:5000/")
    assert run_url(server, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert run_url(SimpleNamespace(uri="sqlite:////tmp/x/mlflow.db"), "3", "abc") is None


def test_runs_of_another_configuration_are_counted_not_averaged(workspace, table5):
    """After the spec changes (or with run --set), older runs of a row stay in the store but do
    not enter the row's numbers; the row says how many there are."""
    from lafite.report.data import OTHER_CONFIGURATION, load_spec_runs
    from lafite.tracking import FINISHED, Tracker

    fill_store(workspace, table5, "mini", rows=["LAFITE_G"], value_of=lambda r, m, s: 1.0)
    tracker = Tracker(workspace)
    parent = tracker.parent_run(table5.id, "mini")
    stale = tracker.start_child(table5.id, parent, row="LAFITE_G", scale="mini", seed=0,
                                config_hash="0123456789ab", config={"train": {"seed": 0}},
                                flat_params={"train.seed": 0})
    stale.log_metrics(1.0, {"IS": 1000.0})
    stale.close(FINISHED)
    runs = load_spec_runs(tracker, table5, "mini")
    assert len(runs.frame) == 1 and runs.frame.loc[0, "metrics.IS"] == 1.0
    assert runs.unfinished["mini"]["LAFITE_G"] == {OTHER_CONFIGURATION: 1}
    table = summarise(table5, runs.frame, "mini", runs.unfinished["mini"])
    assert table.rows[0].cells["IS"].mean == 1.0 and table.rows[0].cells["IS"].n == 1
    markdown = to_markdown(table)
    assert f"- LAFITE_G: 1 run {OTHER_CONFIGURATION}" in markdown


def test_a_property_column_is_shown_but_never_ranked():
    import pandas as pd

    table6 = spec_mod.find("table6")
    frame = pd.DataFrame([
        {"row": "RoBERTa-Base", "seed": 0, "scale": "mini", "run_id": "a",
         "metrics.feature-dim": 64.0, "metrics.IS": 2.0, "metrics.FID-0": 30.0},
        {"row": "CLIP(B-16)", "seed": 0, "scale": "mini", "run_id": "b",
         "metrics.feature-dim": 128.0, "metrics.IS": 3.0, "metrics.FID-0": 20.0},
    ])
    table = summarise(table6, frame, "mini")
    dim = next(c for c in table.columns if c.name == "feature-dim")
    assert (dim.arrow, dim.digits) == ("", 0)
    cells = {r.name: r.cells["feature-dim"] for r in table.rows}
    assert cells["CLIP(B-16)"].mean == 128.0 and cells["RoBERTa-Large"].paper == 1024
    assert not any(c.our_best or c.paper_best or c.our_rank for c in cells.values())
    assert {a.metric for a in table.agreements} == {"IS", "FID-0"}
    markdown = to_markdown(table)
    assert "| Feature dim paper |" in markdown and "| 1024 |" in markdown and "128 (n=1)" in markdown
    assert next(r for r in table.rows if r.name == "CLIP(B-16)").cells["FID-0"].our_best


def test_a_nan_measurement_is_a_failure_not_a_missing_number(tmp_path, table5):
    """A run that measured FID and got NaN is shown as a failed measurement, in the cell and in
    a summary line; a metric never logged stays "not computed"; a finite seed keeps its mean."""
    from lafite.workspace import Workspace

    def value_of(row: str, metric: str, seed: int) -> float | None:
        if metric == "FID-0" and (row == "LAFITE_G" or seed == 1):
            return float("nan")
        if metric == "IS" and row == "LAFITE_G +L_ConG":
            return None
        return 10.0 + seed

    workspace = Workspace.resolve(tmp_path / "ws")
    fill_store(workspace, table5, "smoke", seeds=2, rows=["LAFITE_G", "LAFITE_G +L_ConG"],
               value_of=value_of, history=1)

    build_report(workspace, scale="smoke", out_dir=tmp_path / "md", fmt="markdown", specs=[table5])
    text = (tmp_path / "md" / "table5.md").read_text()
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| LAFITE")}
    #        row | IS paper | IS here | FID paper | FID here
    assert lines["| LAFITE_G"].split(" | ")[4] == "NaN: measurement failed"
    assert lines["| LAFITE_G"].split(" | ")[2] == "10.50 ± 0.71 (n=2)"
    assert lines["| LAFITE_G +L_ConG"].split(" | ")[2] == "not computed"
    assert lines["| LAFITE_G +L_ConG"].split(" | ")[4] == "10.00 (n=1); 1 seed NaN"
    assert "- LAFITE_G: FID (2 of 2 seeds NaN)" in text
    assert "- LAFITE_G +L_ConG: FID (1 of 2 seeds NaN)" in text
    assert "IS (" not in text.split("Measurements that failed")[1]  # never logged is not failed

    build_report(workspace, scale="smoke", out_dir=tmp_path / "html", specs=[table5])
    page = (tmp_path / "html" / "table5.html").read_text()
    rows = dict(_result_rows(page))
    assert "NaN: measurement failed" in rows["LAFITE_G"] and "not computed" not in rows["LAFITE_G"]
    assert "not computed" in rows["LAFITE_G +L_ConG"] and "1 seed NaN" in rows["LAFITE_G +L_ConG"]
    banner = html.unescape(page.split('<p class="banner failed">', 1)[1].split("</p>", 1)[0])
    assert "LAFITE_G: FID (2 of 2 seeds NaN); LAFITE_G +L_ConG: FID (1 of 2 seeds NaN)" in banner
    index = (tmp_path / "html" / "index.html").read_text()
    assert "2 failed measurements: NaN" in index


def test_an_infinite_value_is_a_failed_measurement_too(table5):
    import pandas as pd

    frame = pd.DataFrame([
        {"row": "LAFITE_G", "seed": 0, "scale": "mini", "run_id": "a",
         "metrics.FID-0": float("inf"), "metrics.IS": 2.0},
    ])
    cell = summarise(table5, frame, "mini").rows[0].cells["FID-0"]
    assert (cell.mean, cell.failed, cell.failed_text) == (None, ["inf"], "inf: measurement failed")
