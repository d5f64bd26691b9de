"""Compression while training: INT8 quantization-aware training (quant) and 2:4 sparsity (sparsity), set up
for a student by Compression. Training code: deploy/ only reads what these leave in checkpoints."""

from .compression import Compression

__all__ = ["Compression"]
