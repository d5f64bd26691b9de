"""One deployment path for detection and classification students: ONNX (with a parity check through
onnxruntime), TensorRT engines, and the teacher-vs-student speed and memory table. It reads checkpoints
(with their INT8 ranges and 2:4 masks from yolodistill.compress) and never imports a trainer.

Modules: deployable (any checkpoint -> a traceable model), onnx_export, qdq_coverage (which nodes of an INT8 file
TensorRT can run in INT8), ptq (post-training INT8 ranges for `export --int8 --data`), tensorrt (building engines,
optional; yolodistill.runtime runs them), export (the `export` command's steps), benchmark (and benchmark_memory,
its per-model peak memory).
"""
