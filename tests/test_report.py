"""report.html and summary.json's figures for the labels task: self-contained, relative links
that exist, escaped text, the fooled-rate plot, thumbnails, the gallery cap; the headline (a
verifier is fooled under a view only where it answered right clean) recomputed by hand from the
records. No models needed."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from advx.engine.folder import html as page
from advx.engine.folder.html import fooled_rate_svg, write_report
from advx.engine.folder.records import REPORT_FILES, summarize
from advx.engine.tasks import get_task
from advx.engine.tasks.labels import report as labels_report

LABELS = get_task("labels")


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
            "fooled_at": (5 * (i + 1)) if fooled else None, "steps": 10, "task": "labels",
            "stop_reason": "verifiers_fooled" if fooled else "max_steps",
            "predictions_after": {"v": "dog" if fooled else "cat"}, "margins": {"v": 1.0},
            "deciding": {"v": ["own"]}, "right_before": {"v": {"own": True}},
            "right_after": {"v": {"own": not fooled}},
            "psnr": 35.0, "ssim": 0.95, "linf": 8.0,
        })
    return inp, out, records


def summary_for(records: list[dict], steps: int = 20) -> dict:
    return {"task": "labels", **summarize(records, LABELS, total=len(records)),
            "complete": True, "interrupted": False,
            "config": {"attack": "mifgsm", "eps": 8.0, "steps": steps, "transforms": "none",
                       "output_format": "png"},
            "models": {"surrogates": ["a"], "verifiers": ["v"], "left_out": {}, "notes": []},
            "label_set": ["cat", "dog"], "images_per_s": 1.5, "seconds_per_image": 0.5}


def write(out: Path, records: list[dict], summary: dict, inp: Path) -> Path:
    return write_report(out, records, summary, inp, LABELS)


def test_links_are_relative_and_exist(tmp_path):
    inp, out, records = make_run(tmp_path, ["a.png", "b c.png", "ünï.png"])
    records.append({"path": "cat/broken.jpg", "output": None, "label": "cat", "status": "error",
                    "error": "empty file (0 bytes)", "notes": []})
    path = write(out, records, summary_for(records), inp)
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
    write(out, records, summary_for(records), inp)
    thumbs = sorted((out / REPORT_FILES).glob("*.png"))
    assert len(thumbs) == 5  # original, hardened, difference, two enlarged regions
    for t in thumbs:
        with Image.open(t) as im:
            side = labels_report.REGION * labels_report.ZOOM
            assert im.size == ((side, side) if "zoom" in t.stem else (256, 128))
    diff = next(t for t in thumbs if t.stem.endswith("difference"))
    with Image.open(diff) as im:
        d = np.asarray(im, dtype=int)
    assert abs(d.mean() - 128) < 8 and d.std() > 20  # centred grey, amplified noise


def test_thumbnails_are_reused_when_up_to_date(tmp_path):
    inp, out, records = make_run(tmp_path, ["a.png"])
    write(out, records, summary_for(records), inp)
    stamps = {t: t.stat().st_mtime_ns for t in (out / REPORT_FILES).iterdir()}
    write(out, records, summary_for(records), inp)
    assert stamps == {t: t.stat().st_mtime_ns for t in (out / REPORT_FILES).iterdir()}


def test_text_is_escaped(tmp_path):
    inp, out, records = make_run(tmp_path, ["<b>x</b>.png"])
    records[0]["notes"] = ["<script>alert(1)</script>"]
    records[0]["label"] = "a&b"
    path = write(out, records, summary_for(records), inp)
    html = path.read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>x</b>" not in html and "a&amp;b" in html
    assert "script" not in parse(path).tags


def test_gallery_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "GALLERY_LIMIT", 2)
    inp, out, records = make_run(tmp_path, [f"{i}.png" for i in range(5)])
    path = write(out, records, summary_for(records), inp)
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
    assert "nothing hardened yet" in fooled_rate_svg([], max_steps=10)


def test_summary_counts():
    records = [{"path": "a", "status": "fooled", "fooled_at": 5, "psnr": 30.0, "ssim": 0.9,
                "linf": 8.0, "steps": 10, "seconds": 2.0, "stop_reason": "verifiers_fooled",
                "fooled_every_view": True},
               {"path": "b", "status": "unfooled", "fooled_at": None, "psnr": None, "ssim": 1.0,
                "linf": 0.0, "steps": 20, "seconds": 4.0, "stop_reason": "max_steps",
                "fooled_every_view": False},
               {"path": "c", "status": "error", "error": "x"},
               {"path": "d", "status": "fooled", "fooled_at": 0, "psnr": None, "ssim": 1.0,
                "linf": 0.0, "steps": 0, "seconds": 0.5, "stop_reason": "already_fooled",
                "fooled_every_view": False}]
    s = summarize(records, LABELS, total=5)
    assert (s["fooled"], s["unfooled"], s["errors"], s["pending"]) == (2, 1, 1, 1)
    assert (s["total"], s["done"]) == (5, 4)
    # the already-wrong tile is counted apart: the rates are over the two attacked tiles
    assert s["already_fooled"] == 1
    assert s["fooled_rate"] == 0.5 and s["fooled_every_view_rate"] == 0.5
    assert s["mean_psnr"] == 30.0 and s["mean_ssim"] == round((0.9 + 1.0 + 1.0) / 3, 4)
    assert s["min_ssim"] == 0.9 and s["mean_linf"] == round(8 / 3, 4)
    assert s["mean_steps"] == 10.0 and s["mean_seconds_in_batch"] == round(6.5 / 3, 4)
    assert s["fooled_by_step"] == {"0": 1, "5": 1}
    assert s["stop_reasons"] == {"already_fooled": 1, "max_steps": 1, "verifiers_fooled": 1}
    assert s["headline"] == {} and s["per_model"] == {}  # no answers recorded
    assert "per_view" not in s


def _view_records() -> list[dict]:
    """Five tiles seen by one closed-set verifier under two views (own, jpeg75): the first four
    read right clean under both, the fifth wrong clean under jpeg75. As delivered, a view's
    answer is wrong where its margin is >= 0."""
    recs = []
    for i, (label, own, jpeg) in enumerate([("cat", 1.0, 0.6), ("cat", 0.7, -0.2),
                                            ("dog", 2.0, 1.5), ("dog", -0.1, -0.3),
                                            ("cat", 0.8, 0.9)]):
        other = "dog" if label == "cat" else "cat"
        before = {"own": [label], "jpeg75": [label if i < 4 else other]}
        after = {"own": [other if own >= 0 else label], "jpeg75": [other if jpeg >= 0 else label]}
        recs.append({
            "path": f"{label}/{i}.png", "label": label, "task": "labels",
            "status": "fooled" if min(own, jpeg) >= 0.5 else "unfooled",
            "ssim": [0.91, 0.95, 0.99, 0.93, 0.97][i],
            "deciding": {"v": ["own", "jpeg75"]},
            "margins_by_view": {"v": {"own": own, "jpeg75": jpeg}},
            "selected_by_view_before": {"v": before},
            "selected_by_view_after": {"v": after},
            "right_before": {"v": {w: label in sel for w, sel in before.items()}},
            "right_after": {"v": {w: label in sel for w, sel in after.items()}},
        })
    return recs


def test_headline_views_exact():
    """Per view, by hand: fooled only among the tiles right clean under it (the fifth tile,
    wrong clean under jpeg75, is counted apart there, though wrong as delivered)."""
    from advx.engine.folder.records import distribution, headline

    recs = _view_records()
    views = headline(recs, LABELS)["v"]["views"]
    assert list(views) == ["own", "jpeg75"]
    own, jpeg = views["own"], views["jpeg75"]
    # own: right clean on all 5, wrong as delivered where its margin >= 0: tiles 0, 1, 2, 4
    assert (own["right_clean"], own["wrong_clean"], own["fooled"]) == (5, 0, 4)
    assert own["fooled_rate"] == 0.8
    # jpeg75: right clean on tiles 0-3, of which 0 and 2 are wrong as delivered
    assert (jpeg["right_clean"], jpeg["wrong_clean"], jpeg["fooled"]) == (4, 1, 2)
    assert jpeg["fooled_rate"] == 0.5
    assert own["grid_solve_rate_before"] == 1.0  # every tile read right
    assert own["grid_solve_rate_after"] == 0.0  # a wrong tile in every grid
    labels = [r["label"] for r in recs]
    for w, e in views.items():
        for when in ("before", "after"):
            assert e[f"grid_solve_rate_{when}"] == labels_report.solve_rate(
                [r[f"selected_by_view_{when}"]["v"][w] for r in recs], labels), (w, when)
    assert jpeg["grid_solve_rate_before"] < 1.0  # the fifth tile read wrong clean
    d = distribution([0.91, 0.95, 0.99, 0.93, None])
    assert d["min"] == 0.91 and d["max"] == 0.99 and d["median"] == 0.94
    assert sum(d["histogram"]["counts"]) == 4 and d["histogram"]["edges"][-1] == 1.0


def test_report_shows_views_ssim_and_the_smoothest_region(tmp_path):
    inp, out, records = make_run(tmp_path, ["a.png", "b.png"], size=(64, 64))
    flat = np.full((64, 64, 3), 120, np.uint8)
    flat[:, :10] = np.random.default_rng(1).integers(0, 255, (64, 10, 3))
    Image.fromarray(flat).save(inp / "cat" / "a.png")
    for r, extra in zip(records, _view_records()[:2], strict=True):
        r.update({k: v for k, v in extra.items() if "view" in k or k.startswith("right_")})
    summary = summary_for(records)
    write(out, records, summary, inp)
    html = (out / "report.html").read_text()
    assert "What the solvers still solve" in html and "jpeg75" in html
    assert "SSIM of the delivered files" in html
    page = parse(out / "report.html")
    zooms = [link for link in page.links if "zoom_original" in link]
    assert len(zooms) == 2
    zoom = np.asarray(Image.open(out / unquote(zooms[0])))
    assert zoom.shape == (labels_report.REGION * labels_report.ZOOM,
                          labels_report.REGION * labels_report.ZOOM, 3)
    assert zoom.std() < 1.0, "the smoothest region of a.png is its flat part"
    from advx.engine.tasks.labels.report import smoothest_region

    _y, x, side = smoothest_region(flat, 48)
    assert x >= 10 and side == 48


def test_headline_is_what_the_records_imply():
    """beaten_rate by hand: among the tiles right clean under every deciding view, the share
    wrong under all of them as delivered."""
    from advx.engine.folder.records import headline

    recs = _view_records()
    for r in recs:  # own decides, jpeg75 is reported
        r["deciding"] = {"v": ["own"]}
    h = summarize(recs, LABELS, total=len(recs))["headline"]
    assert list(h) == ["v"] and h["v"]["deciding"] == ["own"]
    assert h["v"]["reported"] == ["jpeg75"]
    # right clean under own on all 5; wrong under it (own margin >= 0) on 4 of them
    assert (h["v"]["solved_clean"], h["v"]["beaten"], h["v"]["beaten_rate"]) == (5, 4, 0.8)
    assert h["v"]["views"] == headline(recs, LABELS)["v"]["views"]
    assert headline(recs, LABELS) == h
    for r in recs:
        r["deciding"] = {"v": ["own", "jpeg75"]}
    both = headline(recs, LABELS)["v"]
    # right clean under both on tiles 0-3 (the fifth is wrong clean under jpeg75: apart);
    # wrong under both as delivered on tiles 0 and 2
    assert (both["solved_clean"], both["beaten"], both["beaten_rate"]) == (4, 2, 0.5)
    assert both["deciding"] == ["own", "jpeg75"] and both["reported"] == []
    # a record without the answers (an error, an older run) is not counted
    assert headline([*recs, {"path": "x", "status": "error"}], LABELS) == headline(recs, LABELS)


def test_summary_of_labels_records_has_per_model_figures():
    recs = _view_records()
    for r in recs:
        r["selected_before"] = {"v": r["selected_by_view_before"]["v"]["own"]}
        r["selected_after"] = {"v": r["selected_by_view_after"]["v"]["own"]}
    s = summarize(recs, LABELS, total=len(recs))
    (m,) = s["per_model"].values()
    assert m["select_rate_before"] == 1.0 and m["select_rate_after"] == 0.2  # tile 3 alone
    assert m["grid_solve_rate_before"] == 1.0 and m["grid_solve_rate_after"] == 0.0


def test_report_and_table_open_with_the_headline(tmp_path):
    from advx.cli.harden import summary_table

    inp, out, records = make_run(tmp_path, ["a.png", "b.png"], size=(32, 32))
    for r, extra in zip(records, _view_records()[:2], strict=True):
        r.update({k: v for k, v in extra.items() if "view" in k or k.startswith("right_")})
        r["deciding"] = {"v": ["own"]}
    summary = summary_for(records)
    write(out, records, summary, inp)
    html = (out / "report.html").read_text()
    assert html.index("What the solvers still solve") < html.index("<h2>Run</h2>")
    assert "jpeg75 (reported)" in html and "still answers cat under: jpeg75" in html
    # tile 0 is wrong under own and jpeg75, tile 1 under own only: both beaten, 2 of 2
    assert "answered 2 tiles right clean under all its deciding views (own)" in html
    assert "<b>2</b> (<b>100%</b>)" in html
    summary.update(images_per_s=None, seconds=0.0)
    lines = summary_table(summary, out).splitlines()
    assert lines[0] == ("  v: right clean under all deciding views (own) on 2; wrong under all "
                        "of them as delivered on 2 (100%)")
    assert lines[1] == "    fooled / right clean: own 2/2, jpeg75 (reported) 1/2"
