"""The configuration of a hardening run (frozen; override with dataclasses.replace)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .views.presets import check_roles, get_preset

ATTACKS = ("auto", "mifgsm", "pgd")
OUTPUT_FORMATS = ("png", "jpeg")
AMP = ("auto", "bf16", "fp16", "off")
# SGM's gamma for transfer runs: it raised the held-out models' fooled rates at no extra cost
TRANSFER_SKIP_GAMMA = 0.5


@dataclass(frozen=True)
class HardenConfig:
    eps: float = 8.0  # L-inf budget in /255 units (8 means 8/255)
    # "auto": pgd when every verifier is also a surrogate (white-box, e.g. a solver spec as
    # both), mifgsm otherwise (momentum with a Nesterov look-ahead, for transfer)
    attack: str = "auto"
    steps: int = 40  # step limit per image
    alpha: float | None = None  # step size in /255 (default eps / 4)
    targeted: bool = False  # push towards a decoy label instead of away from the true one
    # the solver views: what EOT samples and verification checks (None: the task's preset)
    transforms: str | None = None
    # the views an image must beat before it is done (None: the preset's deciding views); the
    # others are reported. A verifier that is also a surrogate is held to every view
    decide: tuple[str, ...] | None = None
    verify_every: int = 5  # torch attack steps between verification passes
    # a verifier counts as fooled when its fooling margin (logits, see losses.py) >= this
    required_margin: float = 0.5
    ssim_floor: float | None = 0.90  # the delivered file's SSIM never falls below this
    eps_rungs: int = 3  # minimal perturbation: eps/4, eps/2, eps, widened only while unfooled
    texture_mask: float | None = 0.35  # budget in flat regions (a share of eps); None: uniform
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
        need(self.attack in ATTACKS, f"attack must be one of {ATTACKS}, got {self.attack!r}")
        need(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        need(self.alpha is None or self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        need(self.verify_every >= 1, "verify_every must be >= 1")
        need(self.ssim_floor is None or 0 < self.ssim_floor < 1, "ssim_floor must be in (0, 1)")
        need(1 <= self.eps_rungs <= 6, "eps_rungs must be in [1, 6]")
        need(self.texture_mask is None or 0 < self.texture_mask <= 1,
             "texture_mask must be in (0, 1]")
        need(self.output_format in OUTPUT_FORMATS, f"output_format must be one of {OUTPUT_FORMATS}")
        need(1 <= self.jpeg_quality <= 100, "jpeg_quality must be in [1, 100]")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.amp in AMP, f"amp must be one of {AMP}")
        if self.decide is not None:
            if isinstance(self.decide, str):
                raise ValueError("decide must be a sequence of view names, not a string")
            object.__setattr__(self, "decide", tuple(self.decide))  # JSON gives a list
        if self.transforms is not None:  # else checked once a task names its preset
            preset = get_preset(self.transforms)
            if self.decide is not None:
                check_roles(preset, self.decide)

    @property
    def deciding(self) -> tuple[str, ...]:
        """The views that decide for verifiers that are not surrogates (``transforms`` set)."""
        if self.transforms is None:
            raise ValueError("no view preset yet: transforms is None until a task names its own")
        return self.decide if self.decide is not None else get_preset(self.transforms).deciding

    def plan(self, white_box: bool) -> Plan:
        """What a run with this config derives from whether it is white-box (:class:`Plan`)."""
        attack = self.attack if self.attack != "auto" else ("pgd" if white_box else "mifgsm")
        return Plan(attack=attack, diversity_prob=0.0 if white_box else 0.5,
                    eot_samples=2 if white_box else 1,
                    skip_gamma=None if white_box else TRANSFER_SKIP_GAMMA, relax_mask=white_box)

    def for_task(self, task) -> HardenConfig:
        """This config with the task's view preset where it names none (``task``: a name or a
        :class:`~advx.engine.tasks.base.Task`)."""
        from .tasks.base import get_task

        if self.transforms is not None:
            return self
        return replace(self, transforms=get_task(task).preset)

    @property
    def eps_01(self) -> float:
        """The budget in the attacks' units ([0, 1] pixels)."""
        return self.eps / 255

    @property
    def alpha_01(self) -> float:
        """The step size in the attacks' units ([0, 1] pixels)."""
        return (self.alpha if self.alpha is not None else self.eps / 4) / 255


@dataclass(frozen=True)
class Plan:
    """What a run derives from whether it is white-box (every verifier is also a surrogate):
    plain PGD on the true gradient with a last unmasked rung, or MI-FGSM with input diversity
    and skip gradients for transfer."""

    attack: str  # "pgd" | "mifgsm"
    diversity_prob: float  # input diversity (DI) probability, 0: off
    eot_samples: int  # transforms drawn per step, gradients averaged
    skip_gamma: float | None  # SGM: residual-branch gradients scaled by this; None: off
    relax_mask: bool  # a last rung at eps everywhere for images the masked budget cannot fool

