"""engine/denoise: solver-side denoisers as OpenCV runs them, on threads, and their stand-ins."""

from __future__ import annotations

import numpy as np
import torch
from toys import rand_images

from advx.engine.views import denoise
from advx.engine.views.transforms import Identity


def test_denoisers_on_threads_give_opencv_s_own_output():
    """Non-local means runs a few tiles at a time on threads: exactly OpenCV's output for each
    tile called alone, in order."""
    import cv2

    x = rand_images(5, 40)
    frames = denoise.to_uint8_bgr(x)
    alone = denoise.from_bgr([cv2.fastNlMeansDenoisingColored(f, None, 10, 10, 7, 21)
                              for f in frames], x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(denoise.NonLocalMeans()(x), alone)
        torch.set_num_threads(1)
        assert torch.equal(denoise.NonLocalMeans()(x), alone)
    finally:
        torch.set_num_threads(threads)
    assert denoise.per_frame(lambda f: f * 2, [np.full(3, i) for i in range(7)])[6][0] == 12


def test_denoiser_threads_work_in_a_forked_child():
    """A child forked after the denoiser threads exist gets threads of its own instead of
    waiting forever on the parent's (which a fork does not copy)."""
    import os
    import signal

    denoise.per_frame(np.negative, [np.ones(2)] * 3)  # the parent's threads now exist
    pid = os.fork()
    if pid == 0:  # the child: the thread pool only (torch's OpenMP is not fork-safe itself)
        signal.alarm(30)
        out = denoise.per_frame(np.negative, [np.full(2, i) for i in range(3)])
        os._exit(0 if out[2][0] == -2 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_bgr_frames_round_trip_on_the_8_bit_grid():
    x = rand_images(2, 8)
    frames = denoise.to_uint8_bgr(x)
    assert frames[0].dtype == np.uint8 and frames[0].shape == (8, 8, 3)
    rgb = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(frames[0], rgb[..., ::-1]), "BGR, as OpenCV holds it"
    assert torch.equal(denoise.from_bgr(frames, x), x), "8-bit images come back exactly"


def test_median_is_opencv_s_and_the_soft_median_carries_a_gradient():
    import cv2

    x = rand_images(2, 16)
    want = denoise.from_bgr([cv2.medianBlur(f, 3) for f in denoise.to_uint8_bgr(x)], x)
    assert torch.equal(denoise.Median(3)(x), want)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(denoise.SoftMedian(3)(xg).sum(), xg)
    assert g.abs().sum() > 0


def test_real_denoise_runs_the_real_filter_forward_and_the_stand_in_backward():
    x = rand_images(1, 16)
    real = denoise.RealDenoise(denoise.Median(3), Identity())
    assert torch.equal(real(x), denoise.Median(3)(x)), "no gradient asked: the real filter"
    xg = x.clone().requires_grad_(True)
    y = real(xg)
    assert torch.equal(y.detach(), denoise.Median(3)(x))
    (g,) = torch.autograd.grad((y * 2).sum(), xg)
    assert torch.equal(g, torch.full_like(x, 2.0)), "straight through"
    assert str(denoise.RealDenoise()) == "real-nlmeans10"
    from advx.engine.views.nlm_jacobian import LinearizedNLM

    assert isinstance(denoise.RealDenoise().soft, LinearizedNLM), "the default stand-in"
