"""ml_collections configs, one file per paper row (see docs/EXPERIMENTS.md).

A config imports its shared base with `dsop_jax.config_files.sibling`, by path, so that
`--config=PATH/TO/configs/NAME.py` works from any directory.
"""
