"""One deployment path for detection and classification students: ONNX (with a parity check through
onnxruntime), TensorRT engines, INT8 quantization-aware training, 2:4 sparsity, and the teacher-vs-student
speed and memory table.

Modules: student (any checkpoint -> a traceable model), onnx_export, runtime (onnxruntime sessions),
tensorrt (engines, optional), quant (INT8 fake quantization), sparsity (2:4 masks), benchmark.
"""
