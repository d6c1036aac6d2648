"""The configuration of a hardening run (frozen; override with dataclasses.replace)."""

from __future__ import annotations

from dataclasses import dataclass

from .defaults import DEFAULT_PRESET

ATTACKS = ("auto", "mifgsm", "pgd", "pgd-l2", "svre")
LOSSES = ("margin", "ce")
OUTPUT_FORMATS = ("png", "jpeg")
# SGM's gamma for transfer runs: on the efficacy benchmark it raised the held-out models' fooled
# rates with no extra arithmetic (benchmarks/EFFICACY.md, "Skip gradients, ...")
TRANSFER_SKIP_GAMMA = 0.5
AMP = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class HardenConfig:
    eps: float = 8.0  # L-inf budget in /255 units (8 means 8/255)
    eps_l2: float = 2.0  # L2 budget in [0, 1] pixel units (pgd-l2 only)
    # "auto": pgd when every verifier is also a surrogate (white-box, e.g. a solver spec as
    # both), mifgsm (momentum, for transfer) otherwise; or "mifgsm", "pgd" (L-inf), "pgd-l2",
    # "svre" (MI-FGSM with ensemble variance reduction: about twice the surrogate passes)
    attack: str = "auto"
    steps: int = 40  # step limit per image
    alpha: float | None = None  # step size, /255 for L-inf (default eps / 4), L2 units for pgd-l2
    random_start: bool = True  # start from a random point of the eps-ball
    loss: str = "margin"  # "margin" (CW) or "ce"
    targeted: bool = False  # push towards a decoy label instead of away from the true one
    momentum: float = 1.0  # MI-FGSM decay
    # NI-FGSM (mifgsm only): each gradient taken at the next sign step of the momentum; on the
    # efficacy benchmark it raised the held-out models' fooled rates at no extra cost
    # (benchmarks/EFFICACY.md, "Nesterov look-ahead")
    nesterov: bool = True
    # input diversity (DI) probability, 0 disables; None: 0.5 for transfer, 0 when white-box
    diversity_prob: float | None = None
    ti_kernel: int = 0  # translation-invariance kernel size (odd), 0 disables
    # transfer augmentations: "ssa" (spectrum), "admix", "si" (scale invariance)
    augments: tuple[str, ...] = ()
    # feature-level loss (FIA): masked clean copies per guide, 0 keeps the logit loss
    fia: int = 0
    # skip gradient (SGM): residual-branch gradients scaled by this, in (0, 1] (1: off);
    # None: TRANSFER_SKIP_GAMMA for transfer, off when white-box
    skip_gamma: float | None = None
    # ghost networks: each residual branch scaled by U[1 - ghost, 1 + ghost] per pass (0: off)
    ghost: float = 0.0
    # surrogates drawn at random for each step's gradient (None: all of them every step)
    members_per_step: int | None = None
    transforms: str = DEFAULT_PRESET  # the solver views: what EOT samples and verification checks
    # transforms drawn per step (gradients averaged); None: 2 when white-box, 1 for transfer
    eot_samples: int | None = None
    # adaptive EOT: transforms whose views the batch still fails are drawn up to 1 + this
    # times as often as those it fools (0: uniform). It raises the verifiers' own views and
    # lowers views they do not check (benchmarks/EFFICACY.md, "Adaptive EOT"): not a default
    eot_focus: float = 0.0
    verify_every: int = 5  # torch attack steps between verification passes
    # at full eps, stop after this many passes fooling no new view (0: never; the efficacy
    # benchmark measured 2 saving 3% of the time and losing a third of the transfer)
    patience: int = 0
    # a verifier counts as fooled when its fooling margin (logits, see losses.py) >= this
    required_margin: float = 0.5
    ssim_floor: float | None = 0.90  # the delivered file's SSIM never falls below this
    eps_rungs: int = 3  # minimal perturbation: eps/4, eps/2, eps, widened only while unfooled
    texture_mask: float | None = 0.35  # budget in flat regions (a share of eps); None: uniform
    # a last rung at eps everywhere for images the masked budget cannot fool; None: when
    # white-box (it helps there; for transfer the SSIM floor then shrinks the whole budget)
    relax_mask: bool | None = None
    output_format: str = "png"  # verification scores exactly what is delivered
    jpeg_quality: int = 90  # when output_format == "jpeg"
    batch_size: int = 16  # images attacked together (halved on out-of-memory)
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    amp: str = "auto"  # autocast for surrogate passes: auto = bf16 on CUDA, off on CPU
    seed: int = 0  # seeded runs repeat exactly on CPU

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(0 < self.eps <= 64, f"eps must be in (0, 64] (/255 units), got {self.eps}")
        need(self.eps_l2 > 0, f"eps_l2 must be > 0, got {self.eps_l2}")
        need(self.attack in ATTACKS, f"attack must be one of {ATTACKS}, got {self.attack!r}")
        need(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        need(self.alpha is None or self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        need(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        need(self.diversity_prob is None or 0 <= self.diversity_prob <= 1,
             "diversity_prob must be in [0, 1]")
        need(self.ti_kernel == 0 or (self.ti_kernel % 2 == 1 and self.ti_kernel >= 3),
             "ti_kernel must be 0 or an odd size >= 3")
        need(self.eot_samples is None or self.eot_samples >= 1, "eot_samples must be >= 1")
        need(all(a in ("ssa", "admix", "si") for a in self.augments),
             f"augments must be among ssa, admix, si; got {self.augments}")
        need(self.fia >= 0, "fia must be >= 0 (0 disables the feature-level loss)")
        need(0 <= self.ghost < 1, f"ghost must be in [0, 1), got {self.ghost}")
        need(self.members_per_step is None or self.members_per_step >= 1,
             "members_per_step must be None or >= 1")
        need(self.skip_gamma is None or 0 < self.skip_gamma <= 1,
             "skip_gamma must be in (0, 1]")
        need(self.eot_focus >= 0, f"eot_focus must be >= 0, got {self.eot_focus}")
        need(self.verify_every >= 1, "verify_every must be >= 1")
        need(self.patience >= 0, "patience must be >= 0")
        need(self.ssim_floor is None or 0 < self.ssim_floor < 1, "ssim_floor must be in (0, 1)")
        need(1 <= self.eps_rungs <= 6, "eps_rungs must be in [1, 6]")
        need(self.texture_mask is None or 0 < self.texture_mask <= 1,
             "texture_mask must be in (0, 1]")
        need(self.output_format in OUTPUT_FORMATS, f"output_format must be one of {OUTPUT_FORMATS}")
        need(1 <= self.jpeg_quality <= 100, "jpeg_quality must be in [1, 100]")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.amp in AMP, f"amp must be one of {AMP}")
        from .views import get_preset

        get_preset(self.transforms)

    def resolved(self, white_box: bool) -> HardenConfig:
        """``auto`` choices made: white-box runs (every verifier is also a surrogate) attack
        with plain PGD, no input diversity, two EOT samples per step (the gradient of the very
        model that verifies, averaged over its views), their true gradient (no SGM) and a last
        unmasked rung; transfer runs with MI-FGSM, DI 0.5, one EOT sample, SGM and the mask
        throughout."""
        from dataclasses import replace

        attack = self.attack if self.attack != "auto" else ("pgd" if white_box else "mifgsm")
        di = self.diversity_prob if self.diversity_prob is not None else (
            0.0 if white_box else 0.5)
        eot = self.eot_samples if self.eot_samples is not None else (2 if white_box else 1)
        relax = self.relax_mask if self.relax_mask is not None else white_box
        skip = self.skip_gamma if self.skip_gamma is not None else (
            1.0 if white_box else TRANSFER_SKIP_GAMMA)
        return replace(self, attack=attack, diversity_prob=di, eot_samples=eot,
                       relax_mask=relax, skip_gamma=skip)

    @property
    def eps_01(self) -> float:
        """The budget in the attacks' units ([0, 1] pixels): eps / 255, or eps_l2 for pgd-l2."""
        return self.eps_l2 if self.attack == "pgd-l2" else self.eps / 255

    @property
    def alpha_01(self) -> float:
        """The step size in the attacks' units ([0, 1] pixels)."""
        if self.attack == "pgd-l2":
            return self.alpha if self.alpha is not None else self.eps_l2 / 8
        return (self.alpha if self.alpha is not None else self.eps / 4) / 255
