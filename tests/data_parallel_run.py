"""For train_test's data-parallel test: trains the tiny digits config on however many CPU devices
this process has and saves the final parameters and metrics to the given .npz path. The test runs
it as a subprocess with 8 devices (XLA_FLAGS) and calls `main` in its own one-device process."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from dsop_jax.training import train  # pylint: disable=g-import-not-at-top
from tests import train_helpers  # pylint: disable=g-import-not-at-top


def main(workdir: str, out: str) -> None:
  if jax.device_count() == 8:  # A global batch that does not split over 8 devices is refused.
    bad = train_helpers.tiny_digits_config(batch_size=12)
    try:
      train.train_and_evaluate(bad, workdir + '_bad')
      raise AssertionError('batch_size=12 on 8 devices was accepted')
    except ValueError as e:
      assert 'config.train.batch_size = 12 is invalid: must be a positive multiple of the number ' \
             'of devices (8)' in str(e), e
  config = train_helpers.tiny_digits_config(num_epochs=1 / 22, checkpoint_every_steps=100)
  state = train.train_and_evaluate(config, workdir)
  flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree.leaves_with_path({'params': state.params, 'stats': state.batch_stats})}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    last = json.loads(f.readlines()[-1])
  np.savez(out, devices=jax.device_count(), metrics=json.dumps(last['eval']), **flat)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
