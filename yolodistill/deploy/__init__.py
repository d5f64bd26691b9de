"""One deployment path for detection and classification students: ONNX (with a parity check through
onnxruntime), TensorRT engines, and the teacher-vs-student speed and memory table. It reads checkpoints
(with their INT8 ranges and 2:4 masks from yolodistill.compress) and never imports a trainer.

Modules: student (any checkpoint -> a traceable model), onnx_export, tensorrt (engines, optional),
export (the `export` command's steps), benchmark.
"""
