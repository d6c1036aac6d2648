"""report.html: self-contained, relative links that exist, escaped text, the fooled-rate plot,
thumbnails, the gallery cap. No models needed."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from advx.engine.folder import report
from advx.engine.folder.records import REPORT_FILES, summarize
from advx.engine.folder.report import fooled_rate_svg, write_report


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def make_run(tmp_path: Path, names: list[str], size=(40, 30)) -> tuple[Path, Path, list[dict]]:
    """An input folder, hardened outputs (+-8 noise) and their records."""
    rng = np.random.default_rng(0)
    inp, out = tmp_path / "in", tmp_path / "out"
    records = []
    for i, name in enumerate(names):
        px = rng.integers(30, 220, (size[1], size[0], 3), dtype=np.uint8)
        adv = np.clip(px.astype(int) + rng.integers(-8, 9, px.shape), 0, 255).astype(np.uint8)
        src, dst = inp / "cat" / name, out / "cat" / (Path(name).stem + ".png")
        src.parent.mkdir(parents=True, exist_ok=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(src)
        Image.fromarray(adv).save(dst)
        fooled = i % 2 == 0
        records.append({
            "path": f"cat/{name}", "output": f"cat/{dst.name}", "label": "cat",
            "status": "fooled" if fooled else "unfooled", "error": None,
            "notes": ["palette image converted to RGB"] if i == 0 else [],
            "fooled_at": (5 * (i + 1)) if fooled else None, "steps": 10,
            "predictions_after": {"v": "dog"}, "margins": {"v": 1.0},
            "psnr": 35.0, "ssim": 0.95, "linf": 8.0,
        })
    return inp, out, records


def summary_for(records: list[dict], steps: int = 20) -> dict:
    return {**summarize(records, total=len(records)), "complete": True, "interrupted": False,
            "config": {"attack": "mifgsm", "eps": 8.0, "steps": steps, "transforms": "none",
                       "output_format": "png"},
            "surrogates": ["a"], "verifiers": ["v"], "label_set": ["cat", "dog"],
            "images_per_s": 1.5}


def test_links_are_relative_and_exist(tmp_path):
    inp, out, records = make_run(tmp_path, ["a.png", "b c.png", "ünï.png"])
    records.append({"path": "cat/broken.jpg", "output": None, "label": "cat", "status": "error",
                    "error": "empty file (0 bytes)", "notes": []})
    path = write_report(out, records, summary_for(records), inp)
    page = parse(path)
    assert "script" not in page.tags and "svg" in page.tags
    assert len(page.links) == 3 * 5 + 3 * 2  # 5 thumbnails each + links to original, hardened
    for link in page.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/")
        assert (out / unquote(parsed.path)).resolve().is_file(), link
    html = path.read_text(encoding="utf-8")
    assert "empty file (0 bytes)" in html and "cat/broken.jpg" in html
    assert "palette image converted to RGB" in html


def test_thumbnails_are_small_and_show_the_difference(tmp_path):
    inp, out, records = make_run(tmp_path, ["big.png"], size=(600, 300))
    write_report(out, records, summary_for(records), inp)
    thumbs = sorted((out / REPORT_FILES).glob("*.png"))
    assert len(thumbs) == 5  # original, hardened, difference, two enlarged regions
    for t in thumbs:
        with Image.open(t) as im:
            side = report.REGION * report.ZOOM
            assert im.size == ((side, side) if "zoom" in t.stem else (256, 128))
    diff = next(t for t in thumbs if t.stem.endswith("difference"))
    with Image.open(diff) as im:
        d = np.asarray(im, dtype=int)
    assert abs(d.mean() - 128) < 8 and d.std() > 20  # centred grey, amplified noise


def test_thumbnails_are_reused_when_up_to_date(tmp_path):
    inp, out, records = make_run(tmp_path, ["a.png"])
    write_report(out, records, summary_for(records), inp)
    stamps = {t: t.stat().st_mtime_ns for t in (out / REPORT_FILES).iterdir()}
    write_report(out, records, summary_for(records), inp)
    assert stamps == {t: t.stat().st_mtime_ns for t in (out / REPORT_FILES).iterdir()}


def test_text_is_escaped(tmp_path):
    inp, out, records = make_run(tmp_path, ["<b>x</b>.png"])
    records[0]["notes"] = ["<script>alert(1)</script>"]
    records[0]["label"] = "a&b"
    path = write_report(out, records, summary_for(records), inp)
    html = path.read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>x</b>" not in html and "a&amp;b" in html
    assert "script" not in parse(path).tags


def test_gallery_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "GALLERY_LIMIT", 2)
    inp, out, records = make_run(tmp_path, [f"{i}.png" for i in range(5)])
    path = write_report(out, records, summary_for(records), inp)
    html = path.read_text(encoding="utf-8")
    assert "first 2 of 5" in html
    assert len(list((out / REPORT_FILES).glob("*.png"))) == 10


def _polyline(svg: str) -> list[tuple[float, float]]:
    pts = re.search(r"points='([^']+)'", svg)[1]
    return [tuple(map(float, p.split(","))) for p in pts.split()]


def test_fooled_rate_plot_is_cumulative():
    records = [{"status": "fooled", "fooled_at": 0}, {"status": "fooled", "fooled_at": 10},
               {"status": "fooled", "fooled_at": 10}, {"status": "unfooled", "fooled_at": None}]
    pts = _polyline(fooled_rate_svg(records, max_steps=20, width=520, height=260))
    left, top, ph, pw = 50, 15, 260 - 15 - 40, 520 - 50 - 15

    def rate(y):
        return round(1 - (y - top) / ph, 3)

    assert [rate(y) for _, y in pts] == [0.0, 0.0, 0.25, 0.25, 0.75, 0.75]
    assert pts[-1][0] == pytest.approx(left + pw)  # drawn out to the step limit
    assert "no hardened images" in fooled_rate_svg([], max_steps=10)


def test_summary_counts():
    records = [{"path": "a", "status": "fooled", "fooled_at": 5, "psnr": 30.0, "ssim": 0.9,
                "linf": 8.0, "stop_reason": "verifiers_fooled"},
               {"path": "b", "status": "unfooled", "fooled_at": None, "psnr": None, "ssim": 1.0,
                "linf": 0.0, "stop_reason": "max_steps"},
               {"path": "c", "status": "error", "error": "x"}]
    s = summarize(records, total=4)
    assert (s["fooled"], s["unfooled"], s["errors"], s["pending"]) == (1, 1, 1, 1)
    assert s["fooled_rate"] == 0.5 and s["mean_psnr"] == 30.0 and s["mean_ssim"] == 0.95
    assert s["fooled_by_step"] == {"5": 1}


def _view_records() -> list[dict]:
    """Four tiles (cat, cat, dog, dog) seen by one closed-set verifier under two views."""
    recs = []
    for i, (label, own, jpeg) in enumerate([("cat", 1.0, 0.6), ("cat", 0.7, -0.2),
                                            ("dog", 2.0, 1.5), ("dog", -0.1, -0.3)]):
        other = "dog" if label == "cat" else "cat"
        recs.append({
            "path": f"{label}/{i}.png", "label": label, "status": "fooled" if min(own, jpeg) >= 0.5
            else "unfooled", "ssim": [0.91, 0.95, 0.99, 0.93][i],
            "margins_by_view": {"v": {"own": own, "jpeg75": jpeg}},
            "selected_by_view_before": {"v": {"own": [label], "jpeg75": [label]}},
            "selected_by_view_after": {"v": {"own": [other if own >= 0 else label],
                                             "jpeg75": [other if jpeg >= 0 else label]}},
        })
    return recs


def test_per_view_figures_exact():
    from advx.engine.folder.records import distribution, per_view

    stats = per_view(_view_records(), grids=50)
    assert list(stats["v"]) == ["own", "jpeg75"]
    assert stats["v"]["own"]["fooled_rate"] == 0.75  # margins >= 0: 3 of 4
    assert stats["v"]["jpeg75"]["fooled_rate"] == 0.5
    assert stats["v"]["own"]["grid_solve_rate_before"] == 1.0  # every tile read right
    assert stats["v"]["own"]["grid_solve_rate_after"] == 0.0  # a wrong tile in every grid
    d = distribution([0.91, 0.95, 0.99, 0.93, None])
    assert d["min"] == 0.91 and d["max"] == 0.99 and d["median"] == 0.94
    assert sum(d["histogram"]["counts"]) == 4 and d["histogram"]["edges"][-1] == 1.0


def test_report_shows_views_ssim_and_the_smoothest_region(tmp_path):
    inp, out, records = make_run(tmp_path, ["a.png", "b.png"], size=(64, 64))
    flat = np.full((64, 64, 3), 120, np.uint8)
    flat[:, :10] = np.random.default_rng(1).integers(0, 255, (64, 10, 3))
    Image.fromarray(flat).save(inp / "cat" / "a.png")
    for r, extra in zip(records, _view_records()[:2], strict=True):
        r.update({k: v for k, v in extra.items() if k.endswith("view") or "_by_view" in k})
    summary = summarize(records, total=2)
    write_report(out, records, summary, inp)
    html = (out / "report.html").read_text()
    assert "Per verifier and view" in html and "jpeg75" in html
    assert "SSIM of the delivered files" in html
    page = parse(out / "report.html")
    zooms = [link for link in page.links if "zoom_original" in link]
    assert len(zooms) == 2
    zoom = np.asarray(Image.open(out / unquote(zooms[0])))
    assert zoom.shape == (report.REGION * report.ZOOM, report.REGION * report.ZOOM, 3)
    assert zoom.std() < 1.0, "the smoothest region of a.png is its flat part"
    from advx.engine.folder.report import smoothest_region

    _y, x, side = smoothest_region(flat, 48)
    assert x >= 10 and side == 48


def test_headline_is_what_the_records_imply():
    from advx.engine.folder.records import headline, per_view, still_right

    recs = _view_records()
    for r in recs:  # own decides, jpeg75 is reported
        r["deciding"] = {"v": ["own"]}
    h = summarize(recs, total=len(recs))["headline"]
    assert list(h) == ["v"] and h["v"]["deciding"] == ["own"]
    # wrong under all deciding views (own margin >= 0) on 3 of the 4 tiles
    assert h["v"]["beaten_rate"] == 0.75
    views = per_view(recs)
    assert h["v"]["grid_solve_rate"] == {
        w: {"before": e["grid_solve_rate_before"], "after": e["grid_solve_rate_after"]}
        for w, e in views["v"].items()}
    assert headline(recs) == h
    for r in recs:
        r["deciding"] = {"v": ["own", "jpeg75"]}
    assert headline(recs)["v"]["beaten_rate"] == 0.5  # both views wrong on tiles 0 and 2
    assert still_right(recs[1]) == {"v": ["jpeg75"]} and still_right(recs[3]) == {
        "v": ["own", "jpeg75"]}


def test_report_and_table_open_with_the_headline(tmp_path):
    from advx.cli.harden import summary_table

    inp, out, records = make_run(tmp_path, ["a.png", "b.png"], size=(32, 32))
    for r, extra in zip(records, _view_records()[:2], strict=True):
        r.update({k: v for k, v in extra.items() if "view" in k})
        r["deciding"] = {"v": ["own"]}
    summary = summarize(records, total=2)
    write_report(out, records, summary, inp)
    html = (out / "report.html").read_text()
    assert html.index("What the solvers still solve") < html.index("Per verifier and view")
    assert "jpeg75 (reported)" in html and "still reads cat under: jpeg75" in html
    summary.update(images_per_s=None, seconds=0.0)
    first = summary_table(summary, out).splitlines()[0]
    assert first.startswith("  v: wrong under all deciding views (own) on 100%")
