"""Tests of advx.bench and ``advx bench`` on tiny CPU models: figures are positive and
finite, both PGDs stay in the eps-ball, the suites cover the issue's matrix. No timing limits."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from click.testing import CliRunner

from advx import bench
from advx.cli.bench import bench_cmd
from advx.engine.config import HardenConfig
from advx.export.zoo import ModelUnavailableError

from tiny import register_tiny_open_clip

TINY_TIMM = "timm:test_efficientnet/none"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"open_clip:{register_tiny_open_clip(tmp_path_factory.mktemp('clip'))}/none"


@pytest.fixture(scope="module")
def cache():
    with bench.ModelCache() as c:
        yield c


@pytest.fixture(autouse=True)
def _export_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVX_CACHE_DIR", str(tmp_path / "advx-cache"))


def positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


# --- measurement functions ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", bench.VERIFY_BACKENDS)
def test_verification_throughput(backend: str, tiny_clip: str, cache: bench.ModelCache) -> None:
    row = bench.verification_throughput(tiny_clip, 2, backend, "cpu", warmup=0, iters=2,
                                        cache=cache)
    assert positive(row.images_per_s) and positive(row.seconds)
    assert row.images_per_s == pytest.approx(2 / row.seconds)
    assert (row.name, row.backend, row.model, row.batch, row.device, row.runs) == (
        "verify", backend, tiny_clip, 2, "cpu", 2)
    assert row.image_steps_per_s is None and row.flop_fraction is None  # no GPU peak on a CPU


def test_verification_of_an_imagenet_classifier(cache: bench.ModelCache) -> None:
    row = bench.verification_throughput(TINY_TIMM, 1, "onnx-fp32", "cpu", warmup=0, iters=1,
                                        cache=cache)
    assert positive(row.images_per_s)


def test_verification_rejects_unknown_backend(tiny_clip: str, cache: bench.ModelCache) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        bench.verification_throughput(tiny_clip, 1, "tensorrt", "cpu", cache=cache)


@pytest.mark.parametrize("impl", bench.ATTACK_IMPLS)
def test_attack_throughput(impl: str, tiny_clip: str, cache: bench.ModelCache) -> None:
    row = bench.attack_throughput([tiny_clip, TINY_TIMM], 2, 1, impl, "cpu", warmup=0, iters=1,
                                  cache=cache)
    assert positive(row.image_steps_per_s) and row.images_per_s is None
    assert row.image_steps_per_s == pytest.approx(2 * 1 / row.seconds)
    assert (row.name, row.backend, row.model) == ("attack", impl, f"{tiny_clip}+{TINY_TIMM}")


def test_both_pgds_stay_in_the_eps_ball(tiny_clip: str, cache: bench.ModelCache) -> None:
    models = [cache.classifier(m, 20, CPU) for m in (tiny_clip, TINY_TIMM)]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 19])
    eps = 8 / 255
    for impl in bench.ATTACK_IMPLS:
        adv = bench.make_attack(models, impl, steps=2, device=CPU, eps=eps)(x, y)
        assert adv.shape == x.shape, impl
        assert float((adv - x).abs().max()) <= eps + 1e-6, impl
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1, impl
        assert not torch.equal(adv, x), impl
        assert not any(m.training for model in models for m in model.modules()), impl


def test_mean_logits_wrapper_averages_the_members(tiny_clip: str,
                                                  cache: bench.ModelCache) -> None:
    models = [cache.classifier(m, 20, CPU) for m in (tiny_clip, TINY_TIMM)]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = (models[0](x) + models[1](x)) / 2
        assert torch.allclose(bench.MeanLogits(models)(x), want, atol=1e-5)


def test_end_to_end_accounts_for_the_whole_run(tiny_clip: str, cache: bench.ModelCache) -> None:
    cheap = HardenConfig(attack="pgd", transforms="none")
    row = bench.end_to_end(3, [tiny_clip], [TINY_TIMM], 2, "cpu", batch_size=2, image_size=40,
                           config=cheap, cache=cache)
    assert positive(row.seconds) and positive(row.images_per_s)
    assert row.image_steps_per_s == pytest.approx(3 * 2 / row.seconds)  # all images, all steps
    assert set(row.fractions) == {"attack", "verify", "load", "other"}
    assert all(0 <= f <= 1 for f in row.fractions.values())
    assert sum(row.fractions.values()) == pytest.approx(1)
    assert row.fractions["attack"] > 0 and row.fractions["verify"] > 0


def test_end_to_end_counts_what_the_verifiers_score(tiny_clip: str, cache: bench.ModelCache,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The verification work of an e2e row (its FLOP share on a GPU) is the images the
    verifiers score: every view on admission and on delivery, one view per lazy pass."""
    from advx.export import OnnxVerifier

    scored: list[int] = []
    call = OnnxVerifier.__call__

    @functools.wraps(call)
    def counting(self, images, *args, **kwargs):
        scored.append(len(images))
        return call(self, images, *args, **kwargs)

    monkeypatch.setattr(OnnxVerifier, "__call__", counting)
    monkeypatch.setattr(bench.e2e, "device_peak", lambda _dev: 1.0)  # as if on a known GPU
    cfg = HardenConfig(attack="pgd", transforms="delivery", verify_every=2)
    work = bench.prepare_end_to_end(3, [tiny_clip], [TINY_TIMM], 3, "cpu", batch_size=2,
                                    image_size=40, config=cfg, cache=cache)
    scored.clear()  # the warm-up run
    work.run()
    views = 3  # own, jpeg75, resize0.75
    assert sum(scored) == bench.verifier_forwards([3, 3, 3], views, 2) == 3 * (2 * views + 2)
    row = work.row(1.0, 1)
    assert row.image_steps_per_s == 9
    assert row.fractions["attack"] > 0 and row.fractions["verify"] > 0
    assert positive(row.flop_fraction)


# --- FLOPs and the hardware limit --------------------------------------------------------------


@pytest.mark.parametrize("gpu,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA GeForce RTX 4090", 165.0),
    ("NVIDIA L40S", None), ("NVIDIA H100 NVL", None), ("NVIDIA GH200 480GB", None),
])
def test_peak_bf16_tflops(gpu: str, peak: float | None) -> None:
    assert bench.peak_bf16_tflops(gpu) == peak


def test_flop_fraction() -> None:
    assert bench.flop_fraction(35.1, 1000.0, 989.0) == pytest.approx(35.1e12 / 989e12)
    assert bench.flop_fraction(None, 1000.0, 989.0) is None
    assert bench.flop_fraction(35.1, 1000.0, None) is None


def test_gflops_per_image(tiny_clip: str, cache: bench.ModelCache) -> None:
    assert bench.gflops_per_image("open_clip:ViT-B-16/none") == 35.1
    assert bench.gflops_per_image("open_clip:ViT-B-32-quickgelu/none") == 8.8
    assert bench.gflops_per_image(tiny_clip) is None
    assert positive(bench.gflops_per_image(tiny_clip, cache.classifier(tiny_clip, 20, CPU)))


# --- suites, table and CLI ---------------------------------------------------------------------


def test_gpu_suite_covers_the_issue() -> None:
    verify = {(c.models[0], c.batch, c.backend, c.device) for c in bench.verify_cases("cuda")}
    for m in bench.OPEN_CLIP_TOWERS:
        for b in (1, 32, 256):
            for backend in ("onnx-fp16", "torch-fp32", "torch-autocast-fp16"):
                assert (m, b, backend, "cuda") in verify
    assert ("effnet-lite0", 1, "onnx-fp32", "cpu") in verify
    assert ("effnet-lite0", 1, "torch-fp32", "cpu") in verify
    attack = {(c.models, c.backend) for c in bench.attack_cases("cuda")}
    assert {(bench.OPEN_CLIP_TOWERS, impl) for impl in bench.ATTACK_IMPLS} <= attack
    assert (("open_clip:ViT-B-16/none",), "advx") in attack
    e2e = bench.e2e_cases("cuda")
    assert {(c.models, c.images, c.steps, len(c.verifiers)) for c in e2e} == {
        (bench.OPEN_CLIP_TOWERS, 1000, 50, 2)}
    assert not set(e2e[0].verifiers) & set(e2e[0].models)


def test_torch_only_cases_need_no_onnx_and_no_open_clip() -> None:
    """Part 1 of benchmarks/gpu.sh: what a GPU machine without carried packages can measure."""
    cases = (bench.verify_cases("cuda", bench.TIMM_TOWERS, backends=bench.TORCH_BACKENDS)
             + bench.attack_cases("cuda", bench.TIMM_TOWERS))
    assert {c.backend for c in cases if c.name == "verify"} == set(bench.TORCH_BACKENDS)
    assert {c.batch for c in cases if c.name == "verify"} == {1, 32, 256}
    assert {m for c in cases for m in c.models} == set(bench.TIMM_TOWERS)
    assert all(c.device == "cuda" for c in cases)
    assert (bench.TIMM_TOWERS, "advx") in {(c.models, c.backend) for c in cases}


@pytest.mark.parametrize("error", [
    ModuleNotFoundError("No module named 'open_clip'", name="open_clip"),
    ModelUnavailableError("open_clip:ViT-B-32 needs `pip install open_clip_torch`"),
])
def test_a_missing_package_skips_the_case(error: Exception, cache: bench.ModelCache,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(bench.harness, "create_classifier", missing)
    case = bench.Case("verify", ("open_clip:ViT-B-32/none",), 1, "torch-fp32", "cpu")
    with pytest.raises(bench.BenchUnavailable, match="open_clip"):
        bench.prepare_case(case, cache)
    skipped: list[str] = []
    rows = bench.run_cases([case], bench.QUICK_SIZES, cache,
                           on_skip=lambda _case, reason: skipped.append(reason))
    assert rows == [] and len(skipped) == 1


def test_format_table_lists_every_row() -> None:
    rows = [
        bench.BenchRow("verify", "onnx-fp16", "open_clip:ViT-B-16/none", 256, "fp16", "cuda",
                       "NVIDIA H100 80GB HBM3", 0.1, 10, images_per_s=2560.0,
                       gflops_per_item=35.1, flop_fraction=0.0908),
        bench.BenchRow("e2e", "hardener", "a+b", 16, "fp32", "cpu", "some CPU", 12.0, 1,
                       images_per_s=1.0, image_steps_per_s=50.0,
                       fractions={"attack": 0.5, "verify": 0.3, "load": 0.1, "other": 0.1}),
    ]
    table = bench.format_table(rows)
    assert "ViT-B-16" in table and "2,560.0" in table and "9.1" in table
    assert "attack 50%" in table and "cuda: NVIDIA H100 80GB HBM3" in table


def test_cli_quick_attack_json(tiny_clip: str) -> None:
    result = CliRunner().invoke(bench_cmd, [
        "--suite", "attack", "--quick", "--device", "cpu", "--models", f"{tiny_clip},{TINY_TIMM}",
        "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["backend"]) for r in rows] == [("attack", i) for i in bench.ATTACK_IMPLS]
    assert all(positive(r["image_steps_per_s"]) for r in rows)


def test_cli_quick_default_model() -> None:
    result = CliRunner().invoke(bench_cmd, ["--suite", "verify", "--quick", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "effnet-lite0" in result.stdout and "onnx-fp32" in result.stdout


def test_cli_rejects_bad_batch_sizes() -> None:
    result = CliRunner().invoke(bench_cmd, ["--batch-sizes", "0,8", "--device", "cpu"])
    assert result.exit_code == 2
    assert "positive integers" in result.output
