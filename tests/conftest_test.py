"""The suite's own scheduling (conftest.py): the long tests start first, spread over the workers."""

import types

from tests import conftest


def _order(nodeids, workers):
  config = types.SimpleNamespace(workerinput={'workercount': workers})
  items = [types.SimpleNamespace(nodeid=n) for n in nodeids]
  conftest.pytest_collection_modifyitems(config, items)
  return [i.nodeid for i in items]


def test_long_tests_lead_each_workers_first_share_longest_first():
  long_ids = [f'tests/{name}' for name in conftest.LONG_TESTS]
  short_ids = [f'tests/short_test.py::test_{i}' for i in range(40)]
  ordered = _order(short_ids[:20] + long_ids[::-1] + short_ids[20:], workers=2)
  assert sorted(ordered) == sorted(short_ids + long_ids)
  half = len(ordered) // 2  # worksteal's first split of the collection over 2 workers.
  shares = [ordered[:half], ordered[half:]]
  seconds = [sum(s for n, s in conftest.LONG_TESTS.items() if f'tests/{n}' in share)
             for share in shares]
  assert abs(seconds[0] - seconds[1]) <= max(conftest.LONG_TESTS.values())
  for share in shares:
    leading = [n for n in share if 'short_test' not in n]
    assert share[:len(leading)] == leading  # Long tests first in each share...
    durations = [conftest.LONG_TESTS[n[len('tests/'):]] for n in leading]
    assert durations == sorted(durations, reverse=True)  # ...longest first.
  shorts = [n for n in ordered if 'short_test' in n]
  assert shorts == short_ids  # The other tests keep their order.


def test_without_workers_the_long_tests_come_first():
  ordered = _order(['tests/a_test.py::test_x', 'tests/' + next(iter(conftest.LONG_TESTS))], 1)
  assert ordered[0] == 'tests/' + next(iter(conftest.LONG_TESTS))
