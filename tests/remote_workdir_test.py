"""A workdir and an export on Cloud Storage (gs://), served by an in-memory GCS server
(tests/fake_gcs.py): training, resuming, plotting's reading and exporting go through etils.epath
(gcsfs here) and Orbax's TensorStore, and nothing lands on the local disk."""

import json
import os
import subprocess
import sys

import fake_gcs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = '''
import json, sys
sys.path.insert(0, 'tests')
import jax, numpy as np
import train_helpers
from dsop_jax.deploy import artifact
from dsop_jax.models import dsop
from dsop_jax.tools import plot
from dsop_jax.training import export, restoring, train
workdir, out = 'gs://bucket/run', 'gs://bucket/export'
config = train_helpers.tiny_digits_config(tensorboard=False)  # 6 steps, checkpoints every 3.
train.train_and_evaluate(config, workdir)
config.train.num_epochs = 0.5  # 11 steps: resumes from step 6.
state = train.train_and_evaluate(config, workdir)
export.export(workdir, out, formats=('orbax', 'onnx'))
module, variables = artifact.load(out)
restored = restoring.restore_variables(config, workdir)
images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
exported = module.apply(variables, images, train=False)[0]
trained = module.apply(dsop.detach(restored), images, train=False)[0]
print(json.dumps({'step': int(state.step), 'max_diff': float(np.max(np.abs(exported - trained))),
                  'metrics_steps': [r['step'] for r in plot.read_metrics(workdir)]}))
'''


def test_train_resume_and_export_on_gcs():
  server = fake_gcs.serve()
  try:
    env = {**os.environ, **fake_gcs.environment(server.server_address[1])}
    result = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    names = sorted(name for bucket, name in fake_gcs.Handler.store.objects if bucket == 'bucket')
  finally:
    server.shutdown()
  assert summary['step'] == 11 and summary['max_diff'] == 0.0
  assert summary['metrics_steps'] == [6, 11]  # One evaluation at the end of each run.
  run = {n[len('run/'):] for n in names if n.startswith('run/')}
  assert {'config.json', 'metrics.jsonl', 'class_names.json', 'train.lock'} <= run
  assert sorted({int(n.split('/')[1]) for n in run if n.startswith('checkpoints/')}) == [6, 9, 11]
  exported = {n[len('export/'):] for n in names if n.startswith('export/')}
  assert {'model_config.json', 'preprocessing.json', 'model_card.json', 'model.onnx'} <= exported
  assert any(n.startswith('variables/') for n in exported)
  assert not [n for n in names if '.tmp-' in n or '.old-' in n]  # No staging left behind.
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))  # Nothing written to a local 'gs:' dir.
