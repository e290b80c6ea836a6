"""The models refuse wrong input where it enters: lengths, image layouts, degenerate sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_ln.models import BasicBlock
from resnet_ln.models import CharLM
from resnet_ln.models import LSTM
from resnet_ln.models import LSTMCell
from resnet_ln.models import LayerNormLSTMCell
from resnet_ln.models import ResNet
from resnet_ln.models import SequenceClassifier
from resnet_ln.models import get_model

X = jax.random.normal(jax.random.key(0), (3, 5, 2))  # [batch, time=5, features]
LSTMS = {
    "forward": LSTM(4),
    "bidirectional": LSTM(4, bidirectional=True),
}


@functools.lru_cache(maxsize=None)
def _params(name):
  return jax.jit(LSTMS[name].init)(jax.random.key(1), X)


@functools.lru_cache(maxsize=None)
def _jit_apply(name):
  return jax.jit(LSTMS[name].apply)


# ---------------------------------------------------------------- sequence lengths

@pytest.mark.parametrize("name", LSTMS)
@pytest.mark.parametrize("lengths, index, value", [
    ([6, 5, 3], 0, 6),   # past the end: NaN backward outputs when unchecked
    ([3, -1, 9], 1, -1),  # negative: the first bad entry is named
])
def test_concrete_lengths_outside_zero_to_time_raise_naming_the_first_bad_entry(
    name, lengths, index, value):
  match = rf"seq_lengths\[{index}\] = {value} is outside \[0, time\] = \[0, 5\]"
  with pytest.raises(ValueError, match=match):
    LSTMS[name].apply(_params(name), X, np.array(lengths))


@pytest.mark.parametrize("name", LSTMS)
def test_traced_lengths_are_clamped_to_zero_and_time(name):
  y, carries = _jit_apply(name)(_params(name), X, jnp.array([7, 5, -2]))
  y_clamped, carries_clamped = _jit_apply(name)(_params(name), X, jnp.array([5, 5, 0]))
  assert np.all(np.isfinite(y))
  np.testing.assert_array_equal(y, y_clamped)
  jax.tree.map(np.testing.assert_array_equal, carries, carries_clamped)


@pytest.mark.parametrize("lengths", [
    [5, 2, 4],
    np.array([5, 2, 4], np.int8),
    np.array([5, 2, 4], np.uint8),
    np.array([5, 2, 4], np.int64),
    jnp.array([5, 2, 4], jnp.int16),
], ids=["list", "int8", "uint8", "int64", "jax_int16"])
def test_lengths_of_any_integer_kind_give_the_same_outputs(lengths):
  expected, _ = _jit_apply("bidirectional")(_params("bidirectional"), X, jnp.array([5, 2, 4]))
  y, _ = LSTMS["bidirectional"].apply(_params("bidirectional"), X, lengths)
  np.testing.assert_allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize("lengths", [
    [5.0, 2.0, 4.0], np.array([5, 2, 4], np.float32), jnp.array([5.0, 2.0, 4.0]),
    np.array([True, True, False]),
], ids=["list", "numpy", "jax", "bool"])
def test_non_integer_lengths_are_refused(lengths):
  with pytest.raises(TypeError, match="seq_lengths must be integers"):
    LSTMS["forward"].apply(_params("forward"), X, lengths)
  with pytest.raises(TypeError, match="seq_lengths must be integers"):
    _jit_apply("forward")(_params("forward"), X, jnp.asarray(lengths))


def test_lengths_of_the_wrong_shape_are_refused():
  with pytest.raises(ValueError, match=r"seq_lengths must be \[batch\] = \(3,\), got shape \(2,\)"):
    LSTMS["forward"].apply(_params("forward"), X, [5, 2])


def test_classifier_checks_its_lengths_too():
  model = SequenceClassifier(num_classes=2, features=4)
  with pytest.raises(ValueError, match=r"seq_lengths\[2\] = 6"):
    model.init(jax.random.key(0), X, np.array([5, 2, 6]))


# ---------------------------------------------------------------- image layouts

def _init_shapes(model, images):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), images))


@pytest.mark.parametrize("name, shape", [
    ("cifar_resnet8", (2, 3, 32, 32)),
    ("resnet18", (1, 3, 224, 224)),
    ("resnet18", (1, 1, 64, 64)),
])
def test_nchw_images_are_refused_with_a_hint(name, shape):
  match = (r"expected NHWC images \[batch, height, width, channels\], "
           rf"got shape \({shape[0]}, {shape[1]}, {shape[2]}, {shape[3]}\) \(NCHW\?\)")
  with pytest.raises(ValueError, match=match):
    _init_shapes(get_model(name), jnp.zeros(shape))


def test_an_image_without_batch_axis_is_refused_with_a_hint():
  with pytest.raises(ValueError, match=r"got shape \(32, 32, 3\): add a batch axis"):
    _init_shapes(get_model("cifar_resnet8"), jnp.zeros((32, 32, 3)))


@pytest.mark.parametrize("shape", [(2, 32), (1, 2, 32, 32, 3)])
def test_images_of_other_ranks_are_refused(shape):
  with pytest.raises(ValueError, match=r"expected NHWC images .*got shape"):
    _init_shapes(get_model("cifar_resnet8"), jnp.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1), (2, 3, 3, 3), (2, 16, 16, 4)])
def test_nhwc_images_of_one_to_four_channels_are_accepted(shape):
  shapes = _init_shapes(get_model("cifar_resnet8"), jnp.zeros(shape))
  assert shapes["params"]["stem_conv"]["kernel"].shape == (3, 3, shape[-1], 16)


# ---------------------------------------------------------------- degenerate sizes

@pytest.mark.parametrize("build, match", [
    (lambda: LSTM(4, num_layers=0), "LSTM: num_layers must be >= 1, got 0"),
    (lambda: LSTM(0), "LSTM: features must be >= 1, got 0"),
    (lambda: LSTM(4, recurrent_dropout_rate=1.0), r"recurrent_dropout_rate must be in \[0, 1\)"),
    (lambda: LayerNormLSTMCell(0), "LayerNormLSTMCell: features must be >= 1, got 0"),
    (lambda: LSTMCell(0), "LSTMCell: features must be >= 1, got 0"),
    (lambda: CharLM(vocab_size=0), "CharLM: vocab_size must be >= 1, got 0"),
    (lambda: CharLM(vocab_size=5, num_layers=0), "CharLM: num_layers must be >= 1, got 0"),
    (lambda: SequenceClassifier(num_classes=0), "SequenceClassifier: num_classes must be >= 1"),
    (lambda: SequenceClassifier(2, dropout_rate=1.5), r"dropout_rate must be in \[0, 1\)"),
    (lambda: get_model("resnet18", num_classes=0), "num_classes must be >= 1 .*got 0"),
    (lambda: get_model("cifar_resnet20", num_classes=0), "num_classes must be >= 1 .*got 0"),
    (lambda: ResNet(stage_sizes=(), block_cls=BasicBlock), "stage_sizes must be one or more"),
    (lambda: ResNet(stage_sizes=(2, 0), block_cls=BasicBlock), "stage_sizes must be one or more"),
    (lambda: get_model("cifar_resnet20", drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\)"),
    (lambda: get_model("cifar_plain20", drop_path_rate=0.1), "drop_path_rate needs residual"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_degenerate_sizes_raise_when_the_model_is_built(build, match):
  with pytest.raises(ValueError, match=match):
    build()
