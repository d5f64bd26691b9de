"""TensorRT engines built from ONNX files through the TensorRT Python API (runtime/tensorrt_engine.py runs them).

TensorRT is an optional extra, imported only inside functions, so this module imports anywhere; where TensorRT or a
CUDA device is missing, build_engine says which and prints the equivalent trtexec command line instead.

Two TensorRT generations differ in how precision is chosen (NVIDIA's "Migrating from TensorRT 10.x to 11.x"):
- 10.x, which JetPack 6 on Orin ships: weakly typed networks; FP16 and INT8 are builder flags (its INT8
  calibrators are deprecated).
- 11.x: every network is strongly typed; the precision flags and calibrators are gone, so an FP16 engine needs an
  ONNX with float16 weights and an INT8 engine needs QuantizeLinear/DequantizeLinear nodes.
INT8 here is always explicit, for both: the Q/DQ nodes of a --qat student or of `yolodistill export --int8 --data`,
which calibrates the same fake quantizers on training images (deploy/ptq.py).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

from ..errors import UserError
from ..runtime.tensorrt_engine import TensorRTUnavailable, tensorrt_status

__all__ = ["trtexec_command", "build_engine", "onnx_has_qdq", "onnx_is_fp16"]

PathLike = Union[str, os.PathLike]
Shape = Sequence[int]  # (N, C, H, W)

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def trtexec_command(onnx_path: PathLike, engine_path: PathLike, *, half: bool = False, int8: bool = False,
                    input_name: str = "images", shape: Shape | None = None, min_shape: Shape | None = None,
                    max_shape: Shape | None = None, workspace_gb: float = 4, trt_major: int | None = None,
                    sparse: bool = False) -> str:
    """The trtexec command line for the same build; `shape` is the optimal (N, C, H, W), min/max default to it.

    trt_major None means 10, what JetPack 6 ships. TensorRT 11 removed --fp16, --int8, --calib and --best: networks
    are strongly typed, the precision is what the ONNX carries, and --stronglyTyped (opt-in on 10.x, always on and
    accepted as a no-op on 11) is the flag that applies. On 10.x, --int8 on an ONNX without Q/DQ nodes and without
    --calib uses placeholder scales: fine for timing, meaningless for accuracy.
    """
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if (trt_major or 10) >= 11:
        args.append("--stronglyTyped")
    else:
        args += ["--fp16"] * (half or int8) + ["--int8"] * int8  # FP16 beside INT8: see build_engine
    opt = shape or min_shape or max_shape
    if opt is not None:
        for which, dims in (("min", min_shape or opt), ("opt", opt), ("max", max_shape or opt)):
            args.append(f"--{which}Shapes={input_name}:{'x'.join(str(int(d)) for d in dims)}")
    args.append(f"--memPoolSize=workspace:{round(workspace_gb * 1024)}M")
    if sparse:  # let the builder pick 2:4 sparse kernels for weights that have the pattern
        args.append("--sparsity=enable")
    return shlex.join(args)


def onnx_has_qdq(path: PathLike) -> bool:
    """Whether the ONNX has QuantizeLinear/DequantizeLinear nodes: explicit INT8, built without a calibrator."""
    return _has_qdq(_load_onnx(path))


def onnx_is_fp16(path: PathLike) -> bool:
    """Whether the ONNX input or weights are float16, which is how TensorRT 11 gets an FP16 engine."""
    return _is_fp16(_load_onnx(path))


def build_engine(onnx_path: PathLike, engine_path: PathLike, *, half: bool = False, int8: bool = False,
                 dynamic: bool = False, batch: int = 1, max_batch: int | None = None, workspace_gb: float = 4,
                 verbose: bool = False, sparse: bool = False) -> Path:
    """Build a TensorRT engine from an ONNX file and write it atomically to engine_path, which is returned.

    A dynamic-batch ONNX gets the profile min 1, opt `batch`, max `max_batch or batch`. INT8 needs an ONNX with
    Q/DQ nodes (a Q/DQ ONNX is INT8 without asking).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model = _load_onnx(onnx_path)
    if workspace_gb <= 0:
        raise UserError(f"the TensorRT workspace must be positive, got {workspace_gb} GB")
    ok, reason = tensorrt_status()
    if not ok:
        _unavailable(reason, onnx_path, engine_path, model, half=half, int8=int8, dynamic=dynamic, batch=batch,
                     max_batch=max_batch, workspace_gb=workspace_gb, sparse=sparse)

    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    has_qdq, is_fp16 = _has_qdq(model), _is_fp16(model)
    _check_precision(onnx_path, major, half=half, int8=int8, has_qdq=has_qdq, is_fp16=is_fp16)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path)  # the parser owns the weights until built
    inp = network.get_input(0)
    shapes = _profile_shapes(onnx_path, tuple(inp.shape), dynamic=dynamic, batch=batch, max_batch=max_batch)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile() if shapes else None
    if profile is not None:
        profile.set_shape(inp.name, *shapes)
        config.add_optimization_profile(profile)
    if sparse and hasattr(trt.BuilderFlag, "SPARSE_WEIGHTS"):  # 2:4 sparse kernels where the weights allow
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if major < 11:  # weak typing: the precision comes from builder flags
        # FP16 beside INT8 for a Q/DQ graph: its float layers (the Detect head's box decoding) then run FP16, not
        # FP32, as NVIDIA's YOLO QAT samples build (trtexec --fp16 --int8); in FP32 they made QAT engines slower
        # than FP16 ones (ultralytics#26167)
        if half or is_fp16 or has_qdq:
            config.set_flag(trt.BuilderFlag.FP16)
        if int8 or has_qdq:  # weakly typed 10.x runs Q/DQ nodes in INT8 only with the INT8 flag on
            config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path}: its log above says why "
                        f"(verbose=True shows more)")
    _write_bytes_atomic(engine_path, serialized, what="TensorRT engine")
    return engine_path


def _unavailable(reason: str, onnx_path: Path, engine_path: Path, model: Any, *, half: bool, int8: bool,
                 dynamic: bool, batch: int, max_batch: int | None, workspace_gb: float, sparse: bool) -> None:
    """No TensorRT here: raise with the trtexec line that builds the same engine where it is."""
    name, dims = _onnx_input(onnx_path, model)
    shapes = _profile_shapes(onnx_path, dims, dynamic=dynamic, batch=batch, max_batch=max_batch)
    line = trtexec_command(onnx_path, engine_path, half=half, int8=int8, input_name=name, workspace_gb=workspace_gb,
                           sparse=sparse, **dict(zip(("min_shape", "shape", "max_shape"), shapes or ())))
    # on 10.x, trtexec --int8 without Q/DQ nodes or a --calib cache uses placeholder scales
    note = " (its INT8 is for timing only: the ONNX has no Q/DQ nodes)" if int8 and not _has_qdq(model) else ""
    raise TensorRTUnavailable(f"cannot build a TensorRT engine here: {reason}. The same build with trtexec{note}: "
                              f"{line}")


def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """The network parsed from the ONNX file, and its parser, which must live as long as the network."""
    # 0: explicit batch is the only mode since 10.0 and strong typing the only one since 11.0 (where the
    # STRONGLY_TYPED creation flag is deprecated and ignored), so each version gets its mode with no flag.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weights resolve beside it
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors or 'no reason given'}")
    if network.num_inputs != 1:
        raise UserError(f"{onnx_path} has {network.num_inputs} inputs; an engine here takes one image batch")
    return network, parser


def _check_precision(onnx_path: PathLike, trt_major: int, *, half: bool, int8: bool, has_qdq: bool,
                     is_fp16: bool) -> None:
    """Refuse, before a long build, a precision that this TensorRT cannot get from this ONNX."""
    if trt_major >= 11 and half and not is_fp16:
        raise UserError(f"TensorRT {trt_major} has no FP16 builder flag (networks are strongly typed since 11.0) "
                        f"and {onnx_path} is float32: export the ONNX with --half")
    if int8 and not has_qdq:
        raise UserError(f"INT8 needs QuantizeLinear/DequantizeLinear nodes and {onnx_path} has none (TensorRT's "
                        f"calibrators are deprecated in 10 and removed in 11): export it with `yolodistill export "
                        f"--int8 --data data.yaml` (post-training) or from a student trained with --qat")


def _profile_shapes(onnx_path: Path, dims: Shape, *, dynamic: bool, batch: int,
                    max_batch: int | None) -> tuple[Shape, Shape, Shape] | None:
    """(min, opt, max) input shapes for a dynamic-batch ONNX, None for a fixed-shape one; -1 marks a dynamic dim."""
    dims = tuple(int(d) for d in dims)
    if len(dims) != 4:
        raise UserError(f"{onnx_path} takes input of shape {dims}; an image batch (N, C, H, W) was expected")
    if any(d < 0 for d in dims[1:]):
        raise UserError(f"{onnx_path} has a dynamic image size {dims}; export it with a fixed --imgsz "
                        f"(only the batch may be dynamic)")
    if dims[0] >= 0:
        if dynamic:
            raise UserError(f"{onnx_path} has a fixed batch of {dims[0]}; export it with --dynamic "
                            f"for a dynamic-batch engine")
        return None
    top = max_batch or batch
    if not 1 <= batch <= top:
        raise UserError(f"the batch sizes must satisfy 1 <= batch ({batch}) <= max batch ({top})")
    return (1, *dims[1:]), (batch, *dims[1:]), (top, *dims[1:])


def _load_onnx(path: PathLike) -> Any:
    """The ONNX model without its external weight files: the checks here need only its structure and dtypes."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise UserError(f"ONNX file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read ONNX file {path}: {e.strerror or e}") from e
    except (DecodeError, ValueError) as e:
        raise UserError(f"{path} is not an ONNX file ({e})") from e


def _onnx_input(path: Path, model: Any) -> tuple[str, tuple[int, ...]]:
    """Name and dims (-1 where dynamic) of the ONNX model's one real input (initializers listed as inputs skipped)."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; an engine here takes one image batch")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def _graphs(model: Any) -> Iterable[Any]:
    """The main graph, every subgraph (If/Loop bodies) and every function body: nodes hide in all of them."""
    import onnx

    stack = [model.graph, *model.functions]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                stack += [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)


def _has_qdq(model: Any) -> bool:
    return any(node.op_type in _QDQ_OPS for graph in _graphs(model) for node in graph.node)


def _is_fp16(model: Any) -> bool:
    import onnx

    fp16 = onnx.TensorProto.FLOAT16
    if any(v.type.tensor_type.elem_type == fp16 for v in model.graph.input):
        return True
    for graph in _graphs(model):
        if any(t.data_type == fp16 for t in getattr(graph, "initializer", ())):
            return True
        # torch's exporter sometimes leaves weights as Constant nodes rather than initializers
        if any(a.name == "value" and a.t.data_type == fp16 for n in graph.node if n.op_type == "Constant"
               for a in n.attribute):
            return True
    return False


def _write_bytes_atomic(path: Path, data: Any, *, what: str) -> None:
    """Write `data` via a synced temp file renamed over `path`: readers see the old file or the new one, never half."""
    from ..checkpoint import atomic_file

    try:
        with atomic_file(path) as f:
            f.write(data)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from e
