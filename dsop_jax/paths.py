"""Workdirs and exports on any filesystem Orbax writes: local paths and Cloud Storage (gs://).

Every file the library reads or writes in a workdir or an export goes through `etils.epath.Path`
(`path`), which Orbax uses too: TensorFlow's gfile for gs:// where TensorFlow is installed, else
fsspec (gcsfs). The helpers here give the two guarantees the training run relies on, whatever the
filesystem: a file replaced whole (`write_atomic`: readers see the old or the new content, never
part), and a line appended after the existing ones (`append_line`; object stores have no append, so
there the object is rewritten).
"""

import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
# Remote schemes whose checkpoints Orbax (TensorStore) can write; other URLs are refused by name.
REMOTE_SCHEMES = ('gs',)


def scheme(p: PathLike) -> str:
  """'gs' for gs://bucket/run, '' for a local path."""
  text = os.fspath(p)
  return text.split('://', 1)[0] if '://' in text else ''


def is_remote(p: PathLike) -> bool:
  return bool(scheme(p))


def path(p: PathLike, field: str = 'path') -> epath.Path:
  """`p` as an epath.Path: a gs:// URL as it is, a local path made absolute.

  Raises:
    ValueError: a URL of a scheme Orbax cannot write (s3://, memory://, ...), naming `field`.
  """
  text = os.fspath(p)
  kind = scheme(text)
  if kind and kind not in REMOTE_SCHEMES:
    raise ValueError(f'{field}={text!r} is invalid: {kind}:// is not supported; give a local path '
                     f'or a {" or ".join(s + "://" for s in REMOTE_SCHEMES)} URL (Orbax writes '
                     'checkpoints there), or mount the storage and give the mount point.')
  return epath.Path(text if kind else os.path.abspath(text))


def write_atomic(p: epath.Path, data: Union[str, bytes]) -> None:
  """Replaces `p` whole. Locally through `p`.tmp, synced and renamed over `p`, so a crash leaves the
  old or the new file; an object store replaces an object whole on each write by itself."""
  mode = 'wb' if isinstance(data, bytes) else 'w'
  if is_remote(p):
    with p.open(mode) as f:
      f.write(data)
    return
  tmp = p.with_name(p.name + '.tmp')
  with open(tmp, mode) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, p)


def append_line(p: epath.Path, line: Union[str, bytes]) -> None:
  """Adds `line` (a newline is added) after the content of `p`, created if missing. Locally an
  append, synced before returning; on an object store the object is rewritten with the line."""
  data = (line if isinstance(line, bytes) else line.encode()) + b'\n'
  if is_remote(p):
    write_atomic(p, (p.read_bytes() if p.exists() else b'') + data)
    return
  with open(p, 'ab') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def move_tree(source: epath.Path, destination: epath.Path) -> None:
  """Moves a directory: one rename locally; on an object store, which has no directories to
  rename, every object is copied and the source deleted."""
  if not is_remote(source):
    os.rename(source, destination)
    return
  for item in sorted(source.iterdir()):
    if item.is_dir():
      move_tree(item, destination / item.name)
    else:
      destination.mkdir(parents=True, exist_ok=True)
      item.copy(destination / item.name, overwrite=True)
  source.rmtree(missing_ok=True)
