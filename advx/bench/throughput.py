"""Throughput of the two halves of hardening alone: verification (images/s of an ONNX or torch
backend on one model) and attack steps (image-steps/s of advx's PGD against torchattacks')."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..engine.devices import resolve_device
from ..export.zoo import parse_name
from .cases import ATTACK_IMPLS, VERIFY_BACKENDS, BenchRow, BenchUnavailable
from .flops import STEP_FLOPS_PER_FORWARD
from .harness import ModelCache, Workload, measured, random_images, rate_row

# --- verification ------------------------------------------------------------------------------


def prepare_verification(model_name: str, batch: int, backend: str, device: str = "auto", *,
                         cache: ModelCache, n_labels: int = 20, seed: int = 0) -> Workload:
    """Score ``batch`` images with one backend; logits end on the CPU for every backend (the
    verifier's contract). Images are on the device already and sized so that the resize is a
    crop at most, which both torch and ONNX paths do in torch."""
    if backend not in VERIFY_BACKENDS:
        raise ValueError(f"backend must be one of {VERIFY_BACKENDS}, got {backend!r}")
    dev = resolve_device(device)
    clf = cache.classifier(model_name, n_labels, dev)
    images = random_images(batch, clf.resize.short, dev, seed)
    if backend.startswith("onnx"):
        precision = backend.removeprefix("onnx-")
        verifier = cache.verifier(model_name, n_labels, precision, dev)

        def run() -> torch.Tensor:
            return verifier(images)

        notes = "onnxruntime, IO binding" if dev.type == "cuda" else "onnxruntime"
    else:
        amp = backend == "torch-autocast-fp16"
        precision = "fp16 autocast" if amp else "fp32"

        def run() -> torch.Tensor:
            with torch.inference_mode(), (torch.autocast(dev.type, dtype=torch.float16) if amp
                                          else contextlib.nullcontext()):
                return clf(images).cpu()

        notes = "open_clip eager" if parse_name(model_name).backend == "open_clip" else "eager"
    gflops = cache.gflops(model_name, clf) if dev.type == "cuda" else None
    return Workload(run, rate_row("verify", backend, model_name, batch, precision, dev, batch,
                                  "images", gflops, notes), dev)


def verification_throughput(model_name: str, batch: int, backend: str, device: str = "auto", *,
                            n_labels: int = 20, warmup: int = 2, iters: int = 5,
                            cache: ModelCache | None = None) -> BenchRow:
    """Images/s of one verification backend on one model at one batch size."""
    return measured(lambda c: prepare_verification(model_name, batch, backend, device,
                                                   n_labels=n_labels, cache=c),
                    cache, warmup, iters)


# --- attack ------------------------------------------------------------------------------------


class MeanLogits(nn.Module):
    """The plain wrapper torchattacks drives: the mean of the members' logits, in fp32.

    Built in eval mode: torchattacks puts the model back into the mode it found it in, and a
    fresh module is in training mode (BatchNorm would then use batch statistics afterwards).
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(images).float() for m in self.members]).mean(0)


def make_attack(models: Sequence[nn.Module], impl: str, *, steps: int, device: torch.device,
                eps: float = 8 / 255, alpha: float = 2 / 255
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """L-inf PGD with random start over ``models``: advx's (ensemble with per-model gradient
    normalisation, bf16 autocast on CUDA) or torchattacks' (cross-entropy on the mean logits,
    fp32). Returns ``attack(images, labels) -> adversarial images``."""
    if impl == "advx":
        from ..engine.attacks import PGD
        from ..engine.attacks.ensemble import Ensemble

        amp = torch.bfloat16 if device.type == "cuda" else None
        return PGD(Ensemble(list(models)), eps_01=eps, alpha_01=alpha, steps=steps,
                   random_start=True, amp_dtype=amp)
    if impl == "torchattacks":
        try:
            import torchattacks
        except ImportError as e:
            raise BenchUnavailable("torchattacks is not installed: pip install torchattacks") from e
        return torchattacks.PGD(MeanLogits(models), eps=eps, alpha=alpha, steps=steps,
                                random_start=True)
    raise ValueError(f"impl must be one of {ATTACK_IMPLS}, got {impl!r}")


def prepare_attack(models: Sequence[str], batch: int, steps: int, impl: str,
                   device: str = "auto", *, cache: ModelCache, n_labels: int = 20,
                   seed: int = 0) -> Workload:
    """``steps`` PGD steps on ``batch`` images against the ensemble of ``models``."""
    dev = resolve_device(device)
    clfs = [cache.classifier(m, n_labels, dev) for m in models]
    attack = make_attack(clfs, impl, steps=steps, device=dev)
    images = random_images(batch, max(c.resize.short for c in clfs), dev, seed)
    labels = torch.randint(n_labels, (batch,), generator=torch.Generator().manual_seed(seed))
    labels = labels.to(dev)

    def run() -> torch.Tensor:
        return attack(images, labels)

    gflops = None
    if dev.type == "cuda":
        per = [cache.gflops(m, c) for m, c in zip(models, clfs, strict=True)]
        gflops = STEP_FLOPS_PER_FORWARD * sum(per) if None not in per else None
    if impl == "advx":
        precision = "bf16 autocast" if dev.type == "cuda" else "fp32"
        notes = "margin loss, per-model gradient normalisation"
    else:
        precision, notes = "fp32", "cross-entropy on mean logits"
    return Workload(run, rate_row("attack", impl, "+".join(models), batch, precision, dev,
                                  batch * steps, "image-steps", gflops,
                                  f"steps {steps}, eps 8/255, alpha 2/255; {notes}"), dev)


def attack_throughput(models: Sequence[str], batch: int, steps: int, impl: str,
                      device: str = "auto", *, n_labels: int = 20, warmup: int = 1,
                      iters: int = 3, cache: ModelCache | None = None) -> BenchRow:
    """Image-steps/s of advx's or torchattacks' PGD on the ensemble of ``models``."""
    return measured(lambda c: prepare_attack(models, batch, steps, impl, device,
                                             n_labels=n_labels, cache=c),
                    cache, warmup, iters)

