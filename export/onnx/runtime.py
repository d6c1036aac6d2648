"""ONNX Runtime sessions: CUDA where asked for and present, else CPU, tuned for sharing a small
CPU with torch. Used by export verifiers and foreign solvers alike; onnxruntime itself is imported
on first use."""

from __future__ import annotations

from pathlib import Path

from .spec import ManifestError


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def make_session(path: Path, precision: str, *, cuda: bool = False):
    """An onnxruntime session on CUDA (an error if its provider does not start) or on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # the CPU provider's layout optimisations (level ALL) crash some fp16 transformer graphs at
    # session creation; EXTENDED keeps every fusion but those
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if precision == "fp16" and not cuda
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    if not cuda:
        # idle pool threads block instead of spinning, which would take a small CPU's cores from
        # torch's attack steps and the OpenCV filters
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


# CPU sessions score this many 224 px images per run (fewer for larger inputs): an onnxruntime
# CPU arena keeps the peak of its largest run for good, and every view of a preset has its own
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
