"""Tests of benchmarks/efficacy.py that run nothing heavy: its named engines are HardenConfig
fields, bad --engine values fail with a message, and every efficacy result file the docs cite
renders; and benchmarks/ keeps its JSON in one results folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from advx.engine.config import HardenConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"


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
    return sorted(p for p in RESULTS.glob("*.json")
                  if not p.name.startswith(("throughput-", "serve-load", "text-")))


def test_every_efficacy_result_renders(efficacy, capsys: pytest.CaptureFixture) -> None:
    paths = efficacy_results()
    assert paths
    assert efficacy.main(["--markdown", *map(str, paths)]) == 0
    table = capsys.readouterr().out
    for p in paths:
        run = json.loads(p.read_text())
        assert run["setting"] in efficacy.SETTINGS, p.name
        assert f"| `{p.stem}` | lite2-whole-tile |" in table


def test_every_text_result_has_its_figures() -> None:
    """benchmarks/text_efficacy.py's files: per run, per judge and view, the fooled share of
    the captchas read right clean, and the budget and time figures the README cites."""
    paths = sorted(RESULTS.glob("text-*.json"))
    assert paths
    for p in paths:
        run = json.loads(p.read_text())
        assert run["setting"] in ("whitebox", "transfer", "defaults", "otsu-bound",
                                  "transfer-bound"), p.name
        for name, r in run["runs"].items():
            assert {"ssim_mean", "ssim_min", "seconds_per_captcha", "steps_mean"} <= set(r)
            for judge in r["judges"]:
                for view, row in r["per_view"][judge].items():
                    assert 0 <= row["fooled"] <= row["read_clean"] <= row["n"], (p.name, view)
            if run["setting"].startswith("transfer"):  # the judge took no part in the run
                assert name not in r["surrogates"] + r["verifiers"], p.name


def test_every_text_result_renders(capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("text_efficacy",
                                                  BENCHMARKS / "text_efficacy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = sorted(RESULTS.glob("text-*.json"))
    assert module.main(["--markdown", *map(str, paths)]) == 0
    table = capsys.readouterr().out
    for p in paths:
        for name, r in json.loads(p.read_text())["runs"].items():
            for judge in r["judges"]:
                assert f"| `{p.stem}` | {name} | {judge} |" in table
    with pytest.raises(SystemExit):
        module.main(["--setting", "whitebox"])  # no --json


def test_benchmark_json_lives_in_one_folder() -> None:
    stray = [p for p in BENCHMARKS.rglob("*.json") if p.parent != RESULTS]
    assert not stray, f"JSON outside benchmarks/results: {stray}"


def test_the_readme_cites_only_kept_results() -> None:
    import re

    readme = (BENCHMARKS / "README.md").read_text()
    cited = set(re.findall(r"results/([\w.-]+\.(?:json|txt))", readme))
    kept = {p.name for p in RESULTS.iterdir()}
    assert cited, "the README cites no result file"
    assert cited <= kept, f"cited but not kept: {sorted(cited - kept)}"
    assert kept <= cited | {"throughput-gpu-torch.json", "throughput-gpu-carried.json"}, (
        f"kept but not cited: {sorted(kept - cited)}")
