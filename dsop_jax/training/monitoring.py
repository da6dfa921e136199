"""What the trainer reports about itself besides the heads' metrics: host memory (so long runs
show leaks), records the input pipeline skipped, and a profiler trace of chosen steps. Kept out of
`train.train_and_evaluate`, which calls them once per summary (or step, for the profiler).
"""

import ctypes
import os
from typing import Any, Dict, Mapping, Tuple

from absl import logging
import jax


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
      'keepcost')]


def host_memory() -> Dict[str, float]:
  """This process's host memory, logged with the training metrics so long runs show leaks.

  'host/rss_mib' is the resident set; 'host/heap_in_use_mib' the bytes malloc has handed out and
  not had back (glibc's mallinfo2; absent elsewhere), which, unlike the RSS, neither hides a leak
  in freed-but-resident memory nor grows with allocator fragmentation; 'host/open_files' counts
  file descriptors. Linux only; elsewhere an empty dict.
  """
  result: Dict[str, float] = {}
  try:
    with open('/proc/self/status') as f:
      rss_kb = next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))
    result['host/rss_mib'] = rss_kb / 1024
    result['host/open_files'] = float(len(os.listdir('/proc/self/fd')))
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    result['host/heap_in_use_mib'] = (info.uordblks + info.hblkhd) / 2**20
  except (OSError, StopIteration, AttributeError):
    pass
  return result


_WARNED_SKIPS: Dict[str, float] = {}  # The last count warned about, per counter.


def skipped_records(counters: Mapping[str, Any]) -> Dict[str, float]:
  """Unreadable records skipped so far by this process's pipelines, warned about once each."""
  counts = {f'data/skipped_{name}_records': float(c.value) for name, c in counters.items()}
  for key, count in counts.items():
    if count and count != _WARNED_SKIPS.get(key):
      logging.warning('%s = %d: unreadable records (incomplete images) were skipped; the run goes '
                      'on without them.', key, count)
      _WARNED_SKIPS[key] = count
  return counts


class Profiler:
  """A jax.profiler trace of training steps [first, last) (config.train.profile_steps) in LOGDIR,
  for TensorBoard's profile plugin or Perfetto; a resumed run traces what is left of the window.

  Not `clu.periodic_actions.Profile`, which differs where it matters here: it starts only at the
  step equal to its `first_profile` (a run resumed inside the window traces nothing), profiles
  again every hour by default, runs for at least `profile_duration_ms`, and stops the trace without
  waiting for the device (under asynchronous dispatch the last steps of the window would fall
  outside it); this one blocks on the state before it stops.
  """

  def __init__(self, steps_window: Tuple[int, ...], logdir: str):
    self.first, self.last = steps_window if steps_window else (-1, -1)
    self.logdir, self.active = logdir, False

  def before(self, step: int) -> None:
    if not self.active and self.first <= step < self.last:
      jax.profiler.start_trace(self.logdir)
      self.active = True

  def after(self, step: int, state: Any) -> None:
    if self.active and step + 1 >= self.last:
      jax.block_until_ready(state)
      self.__exit__()
      logging.info('Profile of steps %d-%d written to %s', self.first, self.last - 1, self.logdir)

  def __enter__(self) -> 'Profiler':
    return self

  def __exit__(self, *exc: Any) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
