"""Score images with an exported classifier through onnxruntime (CUDA where present, else CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..engine.zoo.model import PreprocessCfg, Resize
from .manifest import MODEL_FILE, Manifest, load_manifest
from .spec import ManifestError


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def make_session(path: Path, precision: str, *, cuda: bool = False, intra_op_threads: int = 0):
    """An onnxruntime session on CUDA (falling back to CPU) or on the CPU alone."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # The CPU provider's layout optimisations (level ALL) crash on some fp16 transformer graphs
    # (onnxruntime 1.32 segfaults at session creation); EXTENDED keeps every fusion but those.
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if precision == "fp16" and not cuda
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    if not cuda:
        # idle pool threads block instead of spinning: on a small CPU shared with torch's attack
        # steps and the OpenCV filters, spinning took the cores from them (2 cores, lite2 runs
        # alternating with lite0 forward and backward: torch 2.5-2.9 s spinning off, 3.0-3.2 s
        # on; onnxruntime itself as fast)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN libraries from the torch / nvidia wheels
        ort.preload_dlls()
    session = ort.InferenceSession(str(path), opts,
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back silently
        raise RuntimeError(f"onnxruntime could not start its CUDA provider for {path} "
                           f"(providers: {session.get_providers()}); check the CUDA libraries "
                           f"or pass device='cpu'")
    return session


# CPU sessions score this many 224 px images per run (fewer for larger inputs): an
# onnxruntime CPU arena keeps the peak of its largest run for good, and every view of a preset
# has its own; runs of 4 tiles are as fast per image as runs of 16
CPU_RUN_PIXELS = 4 * 224 * 224


def cpu_run_size(shape: tuple[int, ...]) -> int:
    """Images per CPU session run for inputs of ``shape`` (..., H, W) or (..., H, W, C)."""
    h, w = (shape[-2], shape[-1]) if shape[-1] > 4 else (shape[-3], shape[-2])
    return max(1, CPU_RUN_PIXELS // max(1, h * w))


def check_interface(session, input_name: str, output_name: str, batch_axis: str,
                    where: str | Path = "the graph",
                    error: type[Exception] = ManifestError) -> None:
    """Raise ``error`` unless ``session`` has exactly the declared interface: one input
    ``input_name`` and one output ``output_name``, both with the dynamic first axis
    ``batch_axis``."""
    got = [(v.name, v.shape[0] if v.shape else None)
           for v in (*session.get_inputs(), *session.get_outputs())]
    want = [(input_name, batch_axis), (output_name, batch_axis)]
    if got != want:  # also: more than one input or output
        raise error(
            f"{where}: the graph's (name, batch axis) of its input and output are {got}, "
            f"not the declared {want}"
        )


class OnnxVerifier:
    """images [N, 3, H, W] in [0, 1] (torch, any device) -> float32 label logits (torch, CPU).

    Loads with the CUDA execution provider where present and the CPU one otherwise; on CUDA the
    input is bound straight from the torch tensor's memory (IO binding), with no host copy.
    """

    def __init__(self, export_dir: str | Path, *, device: str = "auto",
                 intra_op_threads: int = 0) -> None:
        self.path = Path(export_dir)
        self.manifest: Manifest = load_manifest(self.path)
        m = self.manifest
        self.name, self.labels = m.source_model, m.labels
        self.resize = Resize(PreprocessCfg(m.input_size, tuple(m.mean), tuple(m.std),
                                           m.interpolation, m.crop_pct))
        use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available_providers()
        if device == "cuda" and not use_cuda:
            raise RuntimeError("device='cuda' asked for but onnxruntime has no CUDA provider; "
                               "install the extra: pip install 'advx[gpu]'")
        dir_ = self.path if self.path.is_dir() else self.path.parent
        self.session = make_session(dir_ / MODEL_FILE, m.precision, cuda=use_cuda,
                                    intra_op_threads=intra_op_threads)
        check_interface(self.session, m.input_name, m.output_name, m.batch_axis, self.path)
        self.device = "cuda" if use_cuda else "cpu"

    def __repr__(self) -> str:
        return f"OnnxVerifier({self.name!r}, {self.manifest.precision}, {self.device})"

    def __call__(self, images: torch.Tensor, geometry=None) -> torch.Tensor:
        """Logits of ``images`` (any size); ``geometry`` replaces the export's own resize and
        crop (a solver that preprocesses differently, see
        :class:`advx.engine.geometry.Geometry`)."""
        size = self.manifest.input_size
        x = (self.resize(images.detach().float()) if geometry is None
             else geometry.apply(images.detach().float(), (size, size))).contiguous()
        if self.device == "cuda" and x.is_cuda:
            return self._run_bound(x)
        arr = x.cpu().numpy()
        step = cpu_run_size(arr.shape)
        outs = [self.session.run([self.manifest.output_name],
                                 {self.manifest.input_name: arr[i : i + step]})[0]
                for i in range(0, max(1, len(arr)), step)]
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])

    def _run_bound(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], len(self.labels)), dtype=torch.float32, device=x.device)
        torch.cuda.current_stream(x.device).synchronize()  # ORT reads x on its own stream
        binding = self.session.io_binding()
        dev_id = x.device.index or 0
        binding.bind_input(self.manifest.input_name, "cuda", dev_id, np.float32, tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(self.manifest.output_name, "cuda", dev_id, np.float32,
                            tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out.cpu()
