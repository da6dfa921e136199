"""`python -m dsop_jax.plot --workdir=DIR [--workdir=DIR ...] [--output=curves.png] [--table=T.md] [--pairs_output=P.png]`
(`dsop-plot`): training curves and tables of runs (`dsop_jax.tools.plot`).
"""

from typing import Sequence

from absl import app
from absl import flags

from dsop_jax import paths
from dsop_jax.tools import plot


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  table = plot.render(f.workdir, f.output, f.label, f.dpi, f.pairs_output)
  if f.table:
    paths.path(f.table, '--table').write_text(table + '\n')
  print(table)
  print(f'Curves written to {f.output}')


def cli() -> None:
  """The `python -m dsop_jax.plot` command line (`dsop-plot`); its flags are defined here, so
  importing the module defines none."""
  flags.DEFINE_multi_string('workdir', None, 'Training workdir (repeat the flag for several runs).')
  flags.DEFINE_string('output', 'curves.png', 'Image to write (png, pdf, svg, ...).')
  flags.DEFINE_multi_string('label', None, 'Legend label per --workdir (default: from the config).')
  flags.DEFINE_string('table', None, 'Also write the markdown summary table to this file.')
  flags.DEFINE_integer('dpi', 100, 'Resolution of raster output.')
  flags.DEFINE_string('pairs_output', None, 'Also draw plain against DSoP runs of the same subset '
                      'and seed (each pair, and mean curves with a band) to this image.')
  flags.mark_flags_as_required(['workdir'])
  app.run(_main)


if __name__ == '__main__':
  cli()
