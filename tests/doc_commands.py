"""Reading the commands a page or a docstring documents, and building the configs they name.

A command is a line holding `--config=PATH[:ARGUMENT]` with the `--config.a.b=VALUE` overrides on
it and on the lines that continue it (a line ending in a backslash, or a following line that
starts with `--config.`); override lines with no `--config=` before them configure `own_config`,
the config a docstring belongs to. `build` parses a command's flags with ml_collections'
config_flags, as `python -m dsop_jax.main` does, so an override naming a field that does not exist
or giving a value of the wrong type fails as it would for a user. Shared by the tests of config
docstrings (recipes_test) and of README.md and docs/ (docs_test).
"""

import dataclasses
import os
import re
import shlex
from typing import List, Optional, Tuple

from absl import flags
import ml_collections
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FLAG = re.compile(r'''--config(\.[\w.]+)?=("[^"]*"|'[^']*'|[^\s;)]+)''')
PLACEHOLDERS = ('...',)  # Values a page leaves to the reader.
_EXAMPLE = re.compile(r'\.\.\.|<|\b[A-Z](-[A-Z])+\b')  # Config arguments that are templates.
_MODULE = re.compile(r'python -m (dsop_jax\.\w+)')


def modules(text: str) -> List[str]:
  """The `python -m dsop_jax.X` modules a page runs."""
  return sorted(set(_MODULE.findall(text)))


@dataclasses.dataclass(frozen=True)
class Command:
  """One documented command: where it stands, its config argument and its overrides."""
  where: str
  config: str  # 'configs/NAME.py[:ARGUMENT]'
  overrides: Tuple[Tuple[str, str], ...]  # ('model.branches.pattern', "''"), as written.

  def argv(self) -> List[str]:
    args = [f'--config={self.config}']
    for field, value in self.overrides:
      if value not in PLACEHOLDERS:
        unquoted = ' '.join(shlex.split(value)) if value[0] in ('"', "'") else value
        args.append(f'--config.{field}={unquoted}')
    return args


def _logical_lines(text: str) -> List[Tuple[int, str]]:
  lines, joined = text.splitlines(), []
  for number, line in enumerate(lines, 1):
    stripped = line.strip()
    continues = joined and (joined[-1][1].endswith('\\') or (
        stripped.startswith('--config.') and '--config=' in joined[-1][1]))
    if continues:
      joined[-1] = (joined[-1][0], joined[-1][1].rstrip('\\') + ' ' + stripped)
    else:
      joined.append((number, stripped))
  return joined


def commands(text: str, where: str, own_config: Optional[str] = None) -> List[Command]:
  """The commands of `text` whose config is a file under configs/ (other paths, such as
  configs/NAME.py, are examples)."""
  found = []
  for number, line in _logical_lines(text):
    matches = _FLAG.findall(line)
    if any(not field and _EXAMPLE.search(value) for field, value in matches):
      continue  # A template (configs/x.py:blocks=A-B-C-D, :<option>, :blocks=...).
    config = next((value.rstrip('.,:`') for field, value in matches if not field), own_config)
    overrides = tuple((field[1:], value) for field, value in matches if field)
    if config is None or not re.match(r'configs/[a-z0-9_]+\.py(:|$)', config) or not (
        overrides or any(not field for field, _ in matches)):
      continue
    found.append(Command(f'{where}:{number}', config, overrides))
  return found


def build(command: Command) -> ml_collections.ConfigDict:
  """The config `command` gives `python -m dsop_jax.main`, from the repository root."""
  argv = ['main'] + command.argv()
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                  sys_argv=argv)  # Which overrides to define, as main's argv.
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    values(argv)
    config = values.config
    if not isinstance(config, ml_collections.ConfigDict):  # config_flags' stand-in for a config
      config.to_dict()  # file that failed to load: it raises that error when used.
    return config
  finally:
    os.chdir(cwd)


def unreached_decays(config: ml_collections.ConfigDict) -> List[float]:
  """The step schedule's decay epochs that training never reaches (at or past num_epochs): a
  command that leaves one has kept a recipe's schedule for another length."""
  if config.optim.schedule != 'step':
    return []
  return [e for e in config.optim.decay_epochs if e >= config.train.num_epochs]


# Console scripts (pyproject.toml's [project.scripts]) and the modules they run.
SCRIPTS = {'dsop-train': 'dsop_jax.main', 'dsop-export': 'dsop_jax.export',
           'dsop-plot': 'dsop_jax.plot', 'dsop-benchmark': 'dsop_jax.benchmark',
           'dsop-complexity': 'dsop_jax.complexity', 'dsop-gradients': 'dsop_jax.gradients',
           'dsop-predict': 'dsop_jax.predict'}
_INVOCATION = re.compile(r'(?:python -m (dsop_jax\.\w+)|(?<![\w-])(dsop-[a-z]+))(?=\s|$|`)')
_END = re.compile(r'`|\s#|&&|\|\||\s\|\s|;|\$\(')


@dataclasses.dataclass(frozen=True)
class Invocation:
  """One documented command line of a dsop_jax entry point: where, which module, its --flags."""
  where: str
  module: str
  flags: Tuple[str, ...]  # '--name' or '--name=value', as written (quotes removed).


def invocations(text: str, where: str) -> List[Invocation]:
  """Every `python -m dsop_jax.X ...` and console-script command line of `text` (continued lines
  joined), with the flags written after it."""
  found = []
  for number, line in _logical_lines(text):
    for match in _INVOCATION.finditer(line):
      module = match.group(1) or SCRIPTS.get(match.group(2))
      if module is None:
        continue
      rest = line[match.end():]
      end = _END.search(rest)
      rest = rest[:end.start()] if end else rest
      try:
        tokens = shlex.split(rest)
      except ValueError:  # An unbalanced quote in prose: the plain split.
        tokens = rest.split()
      found.append(Invocation(f'{where}:{number}', module,
                              tuple(t.rstrip('.,') for t in tokens if t.startswith('--'))))
  return found


def is_placeholder(value: str) -> bool:
  """A value a page leaves to the reader: DIR, OUT, '...', <path>, $VAR."""
  return not value or bool(re.fullmatch(r'[A-Z][A-Z_]*', value)) or any(
      s in value for s in ('...', '<', '$', '['))


# Run in one subprocess (flags are process-wide): for each module in turn, defines its flags as its
# command line does, checks each documented flag's name and value, then removes the flags it added
# (two entry points may define the same name).
FLAG_CHECK = r'''
import importlib, json, sys
from absl import app, flags
sys.path.insert(0, sys.argv[2])
from doc_commands import is_placeholder
app.run = lambda *args, **kwargs: None  # cli() defines the flags, then would run.
problems = []
for module_name, calls in json.loads(sys.argv[1]).items():
  before = set(flags.FLAGS)
  importlib.import_module(module_name).cli()
  for where, given in calls:
    for token in given:
      name, equals, value = token[2:].partition('=')
      if name == 'config' or name.startswith('config.') or name in ('help', 'helpfull'):
        continue  # --config and its overrides: doc_commands.build parses them.
      bare = name[2:] if name.startswith('no') and not equals else None
      if name not in flags.FLAGS and not (bare in flags.FLAGS and flags.FLAGS[bare].boolean):
        problems.append(f'{where}: {module_name} has no flag --{name}')
      elif equals and not is_placeholder(value):
        try:
          flags.FLAGS[name].parse(value)
        except (ValueError, flags.Error) as e:
          problems.append(f'{where}: --{name}={value} is refused by {module_name}: {e}')
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)
print(json.dumps(problems))
'''
