"""Training DSoP-Net and writing what it produced.

`losses` (Eq. 1: alpha L + sum beta_i L_a^i, distillation), `optim` (optax transformations and
schedules), `steps` (the pure jitted train and eval steps), `sharding` (the mesh), `checkpointing`
(Orbax, checksums, preemption), `runs` (a workdir's files, lock and resume checks), `restoring`
(a checkpoint's variables, read without training), `pretrained` (initialising from torchvision/timm
weights or an export), `train` (`train_and_evaluate`, the loop), `monitoring` (host memory, skipped
records, profiling) and `export` (a run's detached network written as an export). Imports models,
data and deploy.
"""
