"""edgeship's on-board agent: stdlib + numpy + one TFLite runtime, never TensorFlow's Keras stack.

This package is also imported by the host for the pieces both sides must agree on
(the runtime shim, quantization helpers, evaluation), so host and board compute
results the same way.
"""

__version__ = "0.1.0"
