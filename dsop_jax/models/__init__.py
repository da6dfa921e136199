"""The networks, pure `nn.Module`s that know nothing of data, optimisers or devices.

`layers` and `stages` (blocks and the stage features every backbone returns), `resnet`,
`cifar_backbones` and `efficientnet` (the backbones), `covpool` (iSQRT-COV: covariance,
Newton-Schulz square root), `branches` (an auxiliary branch: extra blocks, covariance pooling,
classifier), `dsop` (DSoP-Net: backbone plus branches, and `detach`), `gsop` (the second-order
networks of Table XI) and `registry` (names -> modules, config validation, the head specs).
Imports nothing of dsop_jax's other subpackages.
"""
