"""The model registry: `get_model(name, **kwargs)` builds any model by name.

Fixed names are registered with `register_model`; families whose names carry a
number (`cifar_resnet{depth}`) are registered with `register_model_family`, so any
valid depth resolves, while `list_models()` shows the canonical members.
"""

import re
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn

ModelFactory = Callable[..., nn.Module]


class _Family(NamedTuple):
  """Models named `{prefix}{number}`, built by `factory(number, **kwargs)`."""

  prefix: str
  pattern: re.Pattern  # the whole name, with the number as group 1
  factory: Callable[..., nn.Module]
  listed: tuple[int, ...]  # the numbers `list_models()` shows


_MODELS: dict[str, ModelFactory] = {}
_FAMILIES: list[_Family] = []


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
  """Decorator registering `factory(**kwargs) -> nn.Module` under `name`."""

  def decorator(factory: ModelFactory) -> ModelFactory:
    if name in _MODELS:
      raise ValueError(f"Model {name!r} is already registered.")
    _MODELS[name] = factory
    return factory

  return decorator


def register_model_family(
    prefix: str, listed: Sequence[int]
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
  """Decorator registering `factory(number, **kwargs)` for names `{prefix}{number}`.

  Args:
    prefix: the name before the number, e.g. "cifar_resnet".
    listed: the numbers `list_models()` shows (the factory may accept others and
      raises ValueError for invalid ones).
  """

  def decorator(factory):
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)")
    _FAMILIES.append(_Family(prefix, pattern, factory, tuple(listed)))
    return factory

  return decorator


def list_models() -> list[str]:
  """The registered model names, sorted (families show their canonical members)."""
  names = set(_MODELS)
  for family in _FAMILIES:
    names.update(f"{family.prefix}{n}" for n in family.listed)
  return sorted(names)


def get_model(name: str, /, **kwargs) -> nn.Module:
  """Builds the registered model `name`, passing `kwargs` to its constructor.

  Raises:
    ValueError: `name` is not registered; the message lists the known names.
  """
  if name in _MODELS:
    return _MODELS[name](**kwargs)
  for family in _FAMILIES:
    match = family.pattern.fullmatch(name)
    if match:
      return family.factory(int(match.group(1)), **kwargs)
  raise ValueError(
      f"Unknown model {name!r}. Known models: {', '.join(list_models())}."
  )
