"""Running a model file: a .pt checkpoint, an exported .onnx file (onnxruntime) or a TensorRT .engine, as a
detector that val scores and detect runs. deploy/ builds the files; this package runs them, and imports neither
deploy/ nor the tasks.

Modules: loader (RUNTIMES, the suffix -> runtime table, and load_detector, the one entry), exported
(ExportedDetector: the interface and the fixed-batch and input-size checks every exported format shares), metadata
(what an ONNX file says about itself, read once; class names for a file without them), onnx_file (onnxruntime
sessions, OnnxDetector), tensorrt_engine (whether TensorRT runs here, TensorRTRunner, TensorRTDetector).

Adding a format (OpenVINO is next) is one module and one line:
1. runtime/openvino_model.py with `class OpenVinoDetector(ExportedDetector)`: its __init__(path, *, data=None)
   opens the file, sets `names` (metadata.onnx_metadata / sibling_onnx_metadata / class_names where the file
   carries none) and `stride`, and calls `self.set_input_dims((N, C, H, W), None where dynamic)`; its
   run_batch(images) returns the decoded boxes (B, N, 5 + nc) of one batch. Import the runtime's own package inside
   functions, so it stays optional.
2. its suffix in loader.RUNTIMES: `".xml": "openvino_model.OpenVinoDetector"`.
val and detect then take the file, at its fixed size and batch, and say so when a run asks for another.
"""

from .loader import EXPORTED, RUNTIMES, load_detector

__all__ = ["EXPORTED", "RUNTIMES", "load_detector"]
