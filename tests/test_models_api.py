"""One consistent API: documented variants, `train=False` defaults, shared options."""

import dataclasses
import functools
import inspect
import pydoc

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from resnet_ln import models
from resnet_ln.models import BasicBlock
from resnet_ln.models import BottleneckBlock
from resnet_ln.models import CharLM
from resnet_ln.models import LSTM
from resnet_ln.models import LSTMOptions
from resnet_ln.models import ResNet
from resnet_ln.models import ResNetBlock
from resnet_ln.models import SequenceClassifier
from resnet_ln.models import get_model
from resnet_ln.models import list_models
from resnet_ln.models import register_model_family
from resnet_ln.models import registry


# ---------------------------------------------------------------- ResNet variants

VARIANTS = [
    ("ResNet18", "resnet18", "ResNet-18"),
    ("ResNet34", "resnet34", "ResNet-34"),
    ("ResNet50", "resnet50", "ResNet-50"),
    ("ResNet101", "resnet101", "ResNet-101"),
    ("ResNet152", "resnet152", "ResNet-152"),
    ("Plain18", "plain18", "plain 18-layer"),
    ("Plain34", "plain34", "plain 34-layer"),
]


@pytest.mark.parametrize("attribute, name, title", VARIANTS)
def test_variants_are_documented_factories_of_the_registered_resnets(attribute, name, title):
  factory = getattr(models, attribute)
  text = pydoc.render_doc(factory)
  assert title in text and "ResNet" in text and "partial" not in text
  assert factory.__name__ == attribute
  model = factory(num_classes=7)
  assert type(model) is ResNet and model.num_classes == 7
  assert model == get_model(name, num_classes=7)


@pytest.mark.parametrize("factory", [models.CifarResNet, models.CifarPlain])
def test_cifar_variants_are_documented_factories(factory):
  assert "6n + 2" in pydoc.render_doc(factory)
  assert type(factory(20)) is ResNet


def test_resnet_train_defaults_to_false_like_every_other_model():
  for module in (ResNet, CharLM, SequenceClassifier, LSTM):
    assert inspect.signature(module.__call__).parameters["train"].default is False, module
  assert inspect.signature(ResNet.features).parameters["train"].default is False
  model = models.CifarResNet(8)
  images = jnp.ones((2, 8, 8, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)  # no train= needed
  # Eval mode: running statistics, nothing to update.
  _, updates = model.apply(variables, images, mutable=["batch_stats"])
  jax.tree.map(lambda a, b: (a == b).all() or pytest.fail("batch_stats changed"),
               updates["batch_stats"], variables["batch_stats"])


# ---------------------------------------------------------------- blocks

def test_blocks_share_one_base_and_only_the_bottleneck_takes_stride_on_3x3():
  fields = lambda cls: {f.name for f in dataclasses.fields(cls)}
  assert issubclass(BasicBlock, ResNetBlock) and issubclass(BottleneckBlock, ResNetBlock)
  assert fields(BasicBlock) == fields(ResNetBlock)
  assert fields(BottleneckBlock) == fields(ResNetBlock) | {"stride_on_3x3"}
  with pytest.raises(TypeError, match="stride_on_3x3"):
    BasicBlock(16, nn.Conv, nn.BatchNorm, nn.relu, stride_on_3x3=False)


def test_resnet_gives_stride_on_3x3_only_to_blocks_that_take_it():
  # A block class (here a partial of one) without the field builds fine.
  block = functools.partial(BasicBlock, zero_init_residual=False)
  model = ResNet(stage_sizes=(1, 1), block_cls=block, num_filters=8, num_classes=3,
                 stride_on_3x3=False)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  assert shapes["params"]["stage2_block0"]["conv1"]["kernel"].shape == (3, 3, 8, 16)


# ---------------------------------------------------------------- registry

def test_a_family_lists_and_resolves_names_from_its_stored_prefix(monkeypatch):
  monkeypatch.setattr(registry, "_FAMILIES", list(registry._FAMILIES))
  register_model_family(r"odd.name-v\x", listed=(2, 3))(lambda n, **kw: models.CifarResNet(6 * n + 2))
  assert {r"odd.name-v\x2", r"odd.name-v\x3"} <= set(list_models())
  assert get_model(r"odd.name-v\x4").stage_sizes == (4, 4, 4)
  with pytest.raises(ValueError, match="Unknown model"):
    get_model("oddXname-v\\x4")


# ---------------------------------------------------------------- sequence models

# A value other than the default for every LSTM option a sequence model declares.
NON_DEFAULT_OPTIONS = dict(
    features=6, num_layers=3, layer_norm=False, dropout_rate=0.25, recurrent_dropout_rate=0.125,
    unroll=2, per_gate=True, normalize_carried_cell=True, epsilon=1e-3, dtype=jnp.bfloat16,
    param_dtype=jnp.bfloat16)


def _built_lstm(model, *args):
  """The `LSTM` module `model` builds when initialised on `args`."""
  built = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, LSTM) and context.method_name == "__call__":
      built.append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), *args)
  return built[0]


@pytest.mark.parametrize("model, inputs", [
    (CharLM(vocab_size=5, **NON_DEFAULT_OPTIONS), jnp.zeros((1, 3), jnp.int32)),
    (SequenceClassifier(3, bidirectional=True, **NON_DEFAULT_OPTIONS), jnp.zeros((1, 3, 2))),
])
def test_every_lstm_option_of_a_sequence_model_reaches_its_lstm(model, inputs):
  options = [f.name for f in dataclasses.fields(LSTMOptions) if f.name not in ("parent", "name")]
  assert sorted(options) == sorted(NON_DEFAULT_OPTIONS)  # a new option must be added above
  lstm = _built_lstm(model, inputs)
  for option, value in NON_DEFAULT_OPTIONS.items():
    assert getattr(lstm, option) == value, option
  assert lstm.bidirectional == isinstance(model, SequenceClassifier)


def _keywords(module):
  parameters = inspect.signature(module).parameters.values()
  return [(p.name, p.default) for p in parameters if p.name not in ("parent", "name")]


_SHARED_DEFAULTS = [
    ("layer_norm", True), ("dropout_rate", 0.0), ("recurrent_dropout_rate", 0.0),
    ("unroll", 1), ("per_gate", False), ("normalize_carried_cell", False), ("epsilon", 1e-5),
    ("dtype", jnp.float32), ("param_dtype", jnp.float32)]


def test_sequence_model_constructors_keep_their_keyword_arguments_and_defaults():
  empty = inspect.Parameter.empty
  assert _keywords(CharLM) == [
      ("vocab_size", empty), ("embed_dim", 64), ("features", 256), ("num_layers", 2),
  ] + _SHARED_DEFAULTS
  # bidirectional (keyword-only, like every LSTM option) follows the shared options.
  assert _keywords(SequenceClassifier) == [
      ("num_classes", empty), ("features", 128), ("num_layers", 1),
  ] + _SHARED_DEFAULTS + [("bidirectional", False)]
  assert CharLM(11).vocab_size == 11 and SequenceClassifier(4).num_classes == 4
