"""The data side, and the only part of dsop_jax that imports TensorFlow (tf.data, tfds).

`datasets` (what a config's data is: TFDS builders, an ImageFolder tree, the in-memory digits and
Fashion-MNIST; class names, statistics, validation), `image_files` (listing and checking image
files), `input_pipeline` (the tf.data pipeline: augmentation, uint8 batches per process, the
preprocessing recipe written into exports). Imports nothing of models, training or deploy.
"""
