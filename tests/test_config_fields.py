"""Every config field the library reads is declared, with its default, in configs/default.py.

The sources are read with `ast`: `config.FIELD`, `config["FIELD"]`, and
`config[name]` in a loop over literal field names. A read of an undeclared
field would fail under `lock_config` and leave its default in the code.
"""

import ast
import pathlib

import ml_collections
import pytest

from configs import default

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("resnet_ln/**/*.py"), ROOT / "train.py"])
# ConfigDict's own methods and attributes, which are not fields.
METHODS = {name for name in dir(ml_collections.ConfigDict) if not name.startswith("__")}


def fields_read(source: str) -> set[str]:
  """The config fields that `source` reads from a variable named `config`."""
  def is_config(node):
    return isinstance(node, ast.Name) and node.id == "config"

  fields = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Attribute) and is_config(node.value) and node.attr not in METHODS:
      fields.add(node.attr)
    elif isinstance(node, ast.Subscript) and is_config(node.value):
      if isinstance(node.slice, ast.Constant):
        fields.add(node.slice.value)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
        is_config(node.func.value) and node.func.attr == "get" and node.args and \
        isinstance(node.args[0], ast.Constant):
      fields.add(node.args[0].value)
    elif isinstance(node, ast.For):
      loop_names = {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
      subscripts = [n for n in ast.walk(node) if isinstance(n, ast.Subscript)
                    and is_config(n.value) and isinstance(n.slice, ast.Name)
                    and n.slice.id in loop_names]
      if subscripts:
        items = node.iter.elts if isinstance(node.iter, (ast.Tuple, ast.List)) else []
        for item in items:
          first = item.elts[0] if isinstance(item, ast.Tuple) else item
          if isinstance(first, ast.Constant) and isinstance(first.value, str):
            fields.add(first.value)
  return fields


def code_side_defaults(source: str) -> list[int]:
  """Lines that call `config.get(...)`: a default kept in the code instead of default.py."""
  return [node.lineno for node in ast.walk(ast.parse(source))
          if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and isinstance(node.func.value, ast.Name) and node.func.value.id == "config"
          and node.func.attr == "get"]


def test_every_config_field_the_library_reads_is_declared_in_default_py():
  declared = set(default.get_config().keys())
  undeclared = {}
  for path in SOURCES:
    for field in fields_read(path.read_text()) - declared:
      undeclared.setdefault(field, []).append(str(path.relative_to(ROOT)))
  assert not undeclared, f"read but not declared in configs/default.py: {undeclared}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_config_field_has_a_default_in_the_code(path):
  assert not code_side_defaults(path.read_text()), path


def test_the_check_finds_every_kind_of_read():
  source = '''
def f(config):
  a = config.learning_rate + config["momentum"] + config.get("undeclared_field", 1)
  for field, allowed in (("optimizer", ()), ("schedule", ())):
    check(config[field], allowed)
  config.to_json_best_effort()
  tf.config.set_visible_devices([])
'''
  assert fields_read(source) == {"learning_rate", "momentum", "undeclared_field", "optimizer",
                                 "schedule"}
  assert code_side_defaults(source) == [3]
  assert "undeclared_field" not in default.get_config()


def test_the_fields_the_trainer_error_messages_name_can_be_overridden():
  config = default.get_config()
  config.lock()
  config.eval_split = "test"
  config.train_split = "train[:90%]"
  config.shuffle_buffer = 1024
  assert (config.eval_split, config.train_split) == ("test", "train[:90%]")
