"""Tests of `from_torchvision`: torchvision-layout weights give torchvision's logits.

The reference is an independent NumPy forward pass of torchvision's ResNet (NCHW
images, OIHW kernels, eval-mode BatchNorm with running statistics, float64).
"""

import jax
import numpy as np
import pytest

from resnet_ln.models import from_torchvision
from resnet_ln.models import get_model

# torchvision.models.resnet: block kind and blocks per layer.
_ARCHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}


def _state_dict(name, num_classes, seed=0):
  """A torchvision-layout state_dict with random weights and BatchNorm statistics."""
  block, layers = _ARCHS[name]
  rng = np.random.default_rng(seed)
  state = {}

  def conv(key, out_channels, in_channels, size):
    std = np.sqrt(2 / (in_channels * size * size))
    state[key] = rng.normal(0, std, (out_channels, in_channels, size, size)).astype(np.float32)

  def bn(prefix, channels):
    state[f"{prefix}.weight"] = rng.uniform(0.5, 1.0, channels).astype(np.float32)
    state[f"{prefix}.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
    state[f"{prefix}.running_mean"] = rng.normal(0, 0.2, channels).astype(np.float32)
    state[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    state[f"{prefix}.num_batches_tracked"] = np.array(100, np.int64)

  conv("conv1.weight", 64, 3, 7)
  bn("bn1", 64)
  in_channels = 64
  for layer, num_blocks in enumerate(layers, start=1):
    planes = 64 * 2 ** (layer - 1)
    for b in range(num_blocks):
      p = f"layer{layer}.{b}"
      if block == "basic":
        conv(f"{p}.conv1.weight", planes, in_channels, 3)
        conv(f"{p}.conv2.weight", planes, planes, 3)
        out_channels, convs = planes, 2
      else:
        conv(f"{p}.conv1.weight", planes, in_channels, 1)
        conv(f"{p}.conv2.weight", planes, planes, 3)
        conv(f"{p}.conv3.weight", 4 * planes, planes, 1)
        out_channels, convs = 4 * planes, 3
      for k in range(1, convs + 1):
        bn(f"{p}.bn{k}", out_channels if k == convs else planes)
      if (layer > 1 and b == 0) or in_channels != out_channels:
        conv(f"{p}.downsample.0.weight", out_channels, in_channels, 1)
        bn(f"{p}.downsample.1", out_channels)
      in_channels = out_channels
  state["fc.weight"] = rng.normal(0, 0.05, (num_classes, in_channels)).astype(np.float32)
  state["fc.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
  return state


def _conv(x, w, stride, padding):
  """torch.nn.functional.conv2d: x [N, C, H, W], w [O, C, kh, kw]."""
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  kh, kw = w.shape[2:]
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  return np.einsum("nchwij,ocij->nohw", windows[:, :, ::stride, ::stride], w, optimize=True)


def _bn(x, state, prefix):
  """Eval-mode torch.nn.BatchNorm2d (eps 1e-5)."""
  c = lambda v: np.asarray(state[f"{prefix}.{v}"], np.float64)[None, :, None, None]
  return (x - c("running_mean")) / np.sqrt(c("running_var") + 1e-5) * c("weight") + c("bias")


def _max_pool(x):
  """torch.nn.MaxPool2d(3, stride=2, padding=1): pads with -inf."""
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max((-1, -2))


def _torchvision_forward(name, state, images):
  """torchvision.models.resnet forward in eval mode (v1.5: bottlenecks stride the 3x3)."""
  block, layers = _ARCHS[name]
  relu = lambda x: np.maximum(x, 0)
  w = lambda key: np.asarray(state[key], np.float64)
  x = relu(_bn(_conv(images, w("conv1.weight"), 2, 3), state, "bn1"))
  x = _max_pool(x)
  for layer, num_blocks in enumerate(layers, start=1):
    for b in range(num_blocks):
      p, stride = f"layer{layer}.{b}", 2 if layer > 1 and b == 0 else 1
      if block == "basic":
        y = relu(_bn(_conv(x, w(f"{p}.conv1.weight"), stride, 1), state, f"{p}.bn1"))
        y = _bn(_conv(y, w(f"{p}.conv2.weight"), 1, 1), state, f"{p}.bn2")
      else:
        y = relu(_bn(_conv(x, w(f"{p}.conv1.weight"), 1, 0), state, f"{p}.bn1"))
        y = relu(_bn(_conv(y, w(f"{p}.conv2.weight"), stride, 1), state, f"{p}.bn2"))
        y = _bn(_conv(y, w(f"{p}.conv3.weight"), 1, 0), state, f"{p}.bn3")
      if f"{p}.downsample.0.weight" in state:
        x = _bn(_conv(x, w(f"{p}.downsample.0.weight"), stride, 0), state, f"{p}.downsample.1")
      x = relu(x + y)
  x = x.mean((2, 3))
  return x @ w("fc.weight").T + w("fc.bias")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_from_torchvision_reproduces_torchvision_logits(name):
  state = _state_dict(name, num_classes=5)
  # 66 pixels: odd sizes (33, 17, 9, 5, 3) after every stride-2 layer.
  images = np.random.default_rng(1).normal(size=(2, 3, 66, 66))
  expected = _torchvision_forward(name, state, images)

  variables = from_torchvision(name, state)
  model = get_model(name, num_classes=5)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, images.transpose(0, 2, 3, 1).astype(np.float32))
  assert logits.shape == (2, 5)
  relative_error = np.max(np.abs(np.asarray(logits, np.float64) - expected)) / np.max(np.abs(expected))
  assert relative_error < 1e-4


@pytest.fixture(scope="module")
def resnet18_state():
  return _state_dict("resnet18", num_classes=10)


def test_from_torchvision_transposes_kernels_and_splits_batch_stats(resnet18_state):
  variables = from_torchvision("resnet18", resnet18_state)
  assert set(variables) == {"params", "batch_stats"}
  np.testing.assert_array_equal(
      variables["params"]["stem_conv"]["kernel"],
      resnet18_state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"], resnet18_state["fc.weight"].T)
  np.testing.assert_array_equal(
      variables["batch_stats"]["stage2_block0"]["proj_norm"]["var"],
      resnet18_state["layer2.0.downsample.1.running_var"])


def test_from_torchvision_rejects_unknown_name(resnet18_state):
  with pytest.raises(ValueError, match="No torchvision ResNet named 'resnet19'"):
    from_torchvision("resnet19", resnet18_state)


def test_from_torchvision_names_missing_keys(resnet18_state):
  state = {k: v for k, v in resnet18_state.items() if k != "layer3.1.bn2.running_var"}
  with pytest.raises(ValueError, match=r"missing keys: layer3\.1\.bn2\.running_var\."):
    from_torchvision("resnet18", state)


def test_from_torchvision_names_unexpected_keys(resnet18_state):
  state = {**resnet18_state, "layer2.0.conv3.weight": np.zeros((128, 128, 1, 1))}
  with pytest.raises(ValueError, match=r"unexpected keys: layer2\.0\.conv3\.weight\."):
    from_torchvision("resnet18", state)


def test_from_torchvision_names_key_and_both_shapes_on_mismatch(resnet18_state):
  # resnet50's layer1.0.conv1 is 1x1; a resnet18 one is 3x3.
  state = {**resnet18_state, "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1))}
  with pytest.raises(ValueError, match=(r"'layer1\.0\.conv1\.weight'.* \(64, 64, 1, 1\)"
                                        r".* \(64, 64, 3, 3\)")):
    from_torchvision("resnet18", state)
