"""dsop_jax: DSoP-Net (Detachable Second-order Pooling) in JAX/Flax.

The subpackages are the layers of Fig. 1's path, each importing only those listed before it:

  models/    the networks: backbones that return their stage features, the auxiliary branches
             (extra blocks + iSQRT-COV covariance pooling + classifier), DSoP-Net, and `dsop.detach`
             that cuts the branches off. Imports nothing else of dsop_jax.
  data/      sources (TFDS, a folder of images, the in-memory digits and Fashion-MNIST) and the
             tf.data pipeline that feeds uint8 batches. Imports nothing else of dsop_jax.
  deploy/    an export's files and running them without the training stack or TensorFlow: the
             artifact reader, ONNX conversion, torchvision/timm state dicts, predict. Imports models.
  training/  losses (alpha L + sum beta_i L_a^i), optimisers, the jitted steps, the mesh,
             checkpoints, the workdir, pretrained weights, the trainer, and writing a run's export.
             Imports models, data and deploy.
  tools/     analysis: benchmark, complexity, gradients, plot. Imports any of the above.

The modules at the top are the command lines (`python -m dsop_jax.main`, `.export`, `.predict`,
`.plot`, `.benchmark`, `.complexity`, `.gradients`; each flags, then one library call) and two
base modules every layer may use: `paths` (local and gs:// files) and `config_files` (configs
found by path). `dsop_jax.configs` is the repository's `configs/` folder, installed.
"""
