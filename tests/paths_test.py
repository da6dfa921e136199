"""paths.py on a local disk and on Cloud Storage (the in-memory server of tests/fake_gcs.py)."""

import os

from etils.epath import gpath
import pytest

import fake_gcs
from dsop_jax import paths


@pytest.fixture(params=['local', 'gs'])
def root(request, tmp_path, monkeypatch):
  if request.param == 'local':
    yield paths.path(tmp_path)
    return
  server = fake_gcs.serve()
  for key, value in fake_gcs.environment(server.server_address[1]).items():
    monkeypatch.setenv(key, value)
  # epath reads EPATH_USE_TF once per process; this one may have read it before the fixture.
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  yield paths.path(f'gs://bucket/{os.path.basename(tmp_path)}')
  server.shutdown()
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def test_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.path('run')) == os.path.join(tmp_path, 'run')
  assert os.fspath(paths.path('gs://bucket/run')) == 'gs://bucket/run'
  assert paths.is_remote('gs://bucket/run') and not paths.is_remote('/tmp/run')
  with pytest.raises(ValueError, match=r"--workdir='s3://b/run' is invalid: s3:// is not supported"):
    paths.path('s3://b/run', '--workdir')


def test_write_atomic_replaces_the_file_whole(root):
  target = root / 'config.json'
  root.mkdir(parents=True, exist_ok=True)
  paths.write_atomic(target, 'first')
  paths.write_atomic(target, b'second')
  assert target.read_text() == 'second'
  assert sorted(p.name for p in root.iterdir()) == ['config.json']  # No temporary left.


def test_append_line_keeps_what_was_there(root):
  root.mkdir(parents=True, exist_ok=True)
  target = root / 'metrics.jsonl'
  paths.append_line(target, '{"step": 1}')
  paths.append_line(target, b'{"step": 2}')
  assert target.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_move_tree_moves_nested_files(root):
  source, destination = root / 'export.tmp-1', root / 'export'
  (source / 'variables' / 'd').mkdir(parents=True, exist_ok=True)
  (source / 'model_config.json').write_text('{}')
  (source / 'variables' / 'd' / 'blob').write_bytes(b'\x00\x01')
  paths.move_tree(source, destination)
  assert not source.exists()
  assert (destination / 'model_config.json').read_text() == '{}'
  assert (destination / 'variables' / 'd' / 'blob').read_bytes() == b'\x00\x01'
