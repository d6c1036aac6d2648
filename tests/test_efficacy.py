"""Tests of the benchmark scripts that run nothing heavy: efficacy.py's named engines are
HardenConfig fields, bad --engine values fail with a message, and every efficacy and text result
file renders; and benchmarks/ keeps its results in a folder per suite under results/, each file
cited by benchmarks/README.md and each cited file there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from advx.engine.config import HardenConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
SUITES = ("efficacy", "text", "cells", "adapt", "serve", "throughput", "identity")
# written by benchmarks/gpu.sh into results/throughput/ once a GPU run is done (README: GPU run)
GPU_RESULTS = {"throughput/throughput-gpu-torch.json", "throughput/throughput-gpu-carried.json"}


@pytest.fixture(scope="module")
def efficacy():
    spec = importlib.util.spec_from_file_location("efficacy", BENCHMARKS / "efficacy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("engine", ["current", "baseline"])
def test_named_engines_are_harden_config_fields(efficacy, engine: str) -> None:
    assert engine in efficacy.ENGINES
    HardenConfig(**efficacy.engine_overrides(engine))


def test_engine_json_is_checked_against_harden_config(efficacy) -> None:
    assert efficacy.engine_overrides('{"eps_rungs": 2}') == {"eps_rungs": 2}
    with pytest.raises(SystemExit, match="unknown HardenConfig fields"):
        efficacy.engine_overrides('{"no_such_field": 1}')
    with pytest.raises(SystemExit, match="JSON object"):
        efficacy.engine_overrides("[1, 2]")
    with pytest.raises(SystemExit, match="nor a JSON object"):
        efficacy.engine_overrides("no-such-engine")


def test_flags(efficacy) -> None:
    args = efficacy.parse_args(["--setting", "whitebox", "--per-photo", "4"])
    assert (args.setting, args.per_photo, args.engine, args.markdown) == (
        "whitebox", 4, "current", None)
    with pytest.raises(SystemExit):
        efficacy.parse_args(["--per-photo", "0"])
    with pytest.raises(SystemExit):
        efficacy.parse_args(["--setting", "nope"])


def efficacy_results() -> list[Path]:
    return sorted((RESULTS / "efficacy").glob("*.json"))


def text_results() -> list[Path]:
    return sorted((RESULTS / "text").glob("*.json"))


@pytest.fixture(scope="module")
def text_efficacy():
    spec = importlib.util.spec_from_file_location("text_efficacy",
                                                  BENCHMARKS / "text_efficacy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_efficacy_result_renders(efficacy, capsys: pytest.CaptureFixture) -> None:
    paths = efficacy_results()
    assert paths
    assert efficacy.main(["--markdown", *map(str, paths)]) == 0
    table = capsys.readouterr().out
    for p in paths:
        run = json.loads(p.read_text())
        assert run["setting"] in efficacy.SETTINGS, p.name
        assert f"| `{p.stem}` | lite2-whole-tile |" in table


def test_every_text_result_has_its_figures(text_efficacy) -> None:
    """benchmarks/text_efficacy.py's files: per run, per judge and view, the fooled share of
    the captchas read right clean, and the budget and time figures the README cites."""
    paths = text_results()
    assert paths
    for p in paths:
        run = json.loads(p.read_text())
        assert run["setting"] in text_efficacy.SETTINGS, p.name
        for name, r in run["runs"].items():
            assert {"ssim_mean", "ssim_min", "seconds_per_captcha", "steps_mean"} <= set(r)
            for judge in r["judges"]:
                for view, row in r["per_view"][judge].items():
                    assert 0 <= row["fooled"] <= row["read_clean"] <= row["n"], (p.name, view)
            if run["setting"].startswith("transfer"):  # the judge took no part in the run
                assert name not in r["surrogates"] + r["verifiers"], p.name


def test_every_text_result_renders(text_efficacy, capsys: pytest.CaptureFixture) -> None:
    module = text_efficacy
    paths = text_results()
    assert paths
    assert module.main(["--markdown", *map(str, paths)]) == 0
    table = capsys.readouterr().out
    for p in paths:
        for name, r in json.loads(p.read_text())["runs"].items():
            for judge in r["judges"]:
                assert f"| `{p.stem}` | {name} | {judge} |" in table
    with pytest.raises(SystemExit):
        module.main(["--setting", "whitebox"])  # no --json


def test_benchmark_results_live_in_a_folder_per_suite() -> None:
    stray = [p for p in BENCHMARKS.rglob("*.json") if RESULTS not in p.parents]
    assert not stray, f"JSON outside benchmarks/results: {stray}"
    misplaced = [p.relative_to(RESULTS) for p in RESULTS.rglob("*")
                 if p.is_file() and (p.parent.parent != RESULTS or p.parent.name not in SUITES)]
    assert not misplaced, f"results outside a suite folder ({', '.join(SUITES)}): {misplaced}"


def test_the_readme_cites_only_kept_results() -> None:
    import re

    readme = (BENCHMARKS / "README.md").read_text()
    cited = set(re.findall(r"results/([\w./-]+\.(?:json|txt))", readme))
    kept = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file()}
    assert cited, "the README cites no result file"
    assert cited <= kept, f"cited but not kept: {sorted(cited - kept)}"
    assert kept <= cited | GPU_RESULTS, f"kept but not cited: {sorted(kept - cited)}"
    for suite in SUITES:  # every suite holds what the README cites of it
        assert any(c.startswith(f"{suite}/") for c in cited), suite
