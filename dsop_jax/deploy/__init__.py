"""Deploying the detached network, without TensorFlow and without the training stack.

`artifact` (an export directory's files, loading its plain network), `onnx_export` (the network as
an ONNX graph), `torch_weights` (torchvision/timm state dicts as safetensors, both ways) and
`predict` (images -> top-k classes from an export, in its Orbax, StableHLO or ONNX form). Imports
models only (and the base module `paths`); `tests/architecture_test.py` checks that importing it
loads no TensorFlow, Keras, scikit-learn or clu.
"""
