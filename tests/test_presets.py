"""engine/presets: one registry of transform presets (views, EOT, geometry and help together)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from advx.engine.config import HardenConfig
from advx.engine.views import presets
from advx.engine.views.presets import (
    PRESETS,
    TRANSFORM_PRESETS,
    VIEW_GLOSSARY,
    Preset,
    get_preset,
    register_preset,
    view_matrices,
)
from advx.engine.views.view import EOT_TRANSFORMS, VIEWS, Eot, View, eot_of, views_of


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_s_names_resolve(name):
    p = get_preset(name)
    assert p.name == name and p.help, "a preset has a line of help"
    vs = views_of(name)
    assert all(isinstance(v, View) for v in vs)
    assert tuple(v.name for v in vs) == p.views and views_of(p) == vs
    assert vs[0].name == "own", "the verifier's own preprocessing first (scored for every row)"
    assert len(set(p.views)) == len(p.views) and len(set(p.eot)) == len(p.eot)
    eot = eot_of(name)
    assert isinstance(eot, Eot) and eot_of(p) == eot
    assert eot.transforms == tuple(EOT_TRANSFORMS[n] for n in p.eot)
    assert (eot.geometry is not None) == p.geometry


def test_the_registry_names_every_preset_once():
    from advx.engine.tasks import TASKS, get_task

    assert tuple(PRESETS) == TRANSFORM_PRESETS
    # no global default: a config names none until a task gives its own
    assert HardenConfig().transforms is None
    assert (get_task("labels").preset, get_task("text").preset) == ("solver", "text")
    for task in TASKS.values():
        assert task.preset in PRESETS, task.name
        assert HardenConfig().for_task(task).transforms == task.preset
        assert HardenConfig().for_task(task.name).deciding == get_preset(task.preset).deciding
    assert HardenConfig(transforms="jpeg").for_task("labels").transforms == "jpeg"
    with pytest.raises(ValueError, match="no view preset yet"):
        _ = HardenConfig().deciding
    assert get_preset("solver").geometry and not get_preset("jpeg").geometry
    assert eot_of("solver").geometry is not None and eot_of("jpeg").geometry is None
    used = {v for p in PRESETS.values() for v in p.views}
    assert used == set(VIEWS), "every view is in some preset's matrix"
    assert {t for p in PRESETS.values() for t in p.eot} == set(EOT_TRANSFORMS)


def test_duplicates_and_empty_presets_are_refused(monkeypatch):
    monkeypatch.setattr(presets, "PRESETS", dict(PRESETS))  # a copy: the registry is left alone
    with pytest.raises(ValueError, match="already registered"):
        register_preset(Preset("solver", ("own",), ("identity",)))
    assert presets.PRESETS["solver"] == PRESETS["solver"]
    with pytest.raises(ValueError, match="needs views"):
        register_preset(Preset("empty", (), ("identity",)))
    with pytest.raises(ValueError, match="needs views"):
        register_preset(Preset("no-eot", ("own",), ()))
    new = register_preset(Preset("plain-jpeg", ("own", "jpeg50"), ("jpeg50-95",), help="h"))
    assert presets.PRESETS["plain-jpeg"] is new and presets.get_preset("plain-jpeg") is new
    assert "plain-jpeg" not in PRESETS


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown transform preset 'blur'"):
        get_preset("blur")
    with pytest.raises(ValueError, match="unknown views"):
        views_of(Preset("typo", ("own", "jpeg-75"), ("identity",)))
    with pytest.raises(ValueError, match="unknown EOT transforms"):
        eot_of(Preset("typo", ("own",), ("identity", "jpeg")))


def test_the_config_refuses_an_unknown_preset():
    with pytest.raises(ValueError, match="transform preset"):
        HardenConfig(transforms="blur")
    with pytest.raises(ValueError, match="transform preset"):
        dataclasses.replace(HardenConfig(), transforms="blur")
    for name in PRESETS:
        assert HardenConfig(transforms=name).transforms == name


def test_view_matrices_list_every_preset():
    lines = view_matrices().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == list(PRESETS)
    for line, p in zip(lines, PRESETS.values(), strict=True):
        assert line == p.matrix()
        assert all(re.search(rf"[ ,]{re.escape(v)}(,|;|$)", line) for v in p.views), line


def test_the_glossary_explains_every_view():
    for name in VIEWS:
        assert re.sub(r"^jpeg\d+$", "jpegQ", name) in VIEW_GLOSSARY, name


def test_presets_are_torch_free():
    import subprocess
    import sys

    code = "import sys, advx.engine.views.presets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
