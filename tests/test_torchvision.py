"""Tests of `from_torchvision`: torchvision-layout weights give torchvision's logits.

The reference is an independent NumPy forward pass of torchvision's ResNet (NCHW
images, OIHW kernels, eval-mode BatchNorm with running statistics, float64).
"""

import importlib.util
import sys

import jax
import numpy as np
import pytest

from resnet_ln.models import from_torchvision
from resnet_ln.models import get_model
from resnet_ln.models import load_state_dict

_HAS_TORCH = importlib.util.find_spec("torch") is not None

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


def _save(state, path):
  """Writes a state dict as the file's extension says."""
  if path.suffix == ".safetensors":
    import safetensors.numpy
    safetensors.numpy.save_file(state, str(path))
  elif path.suffix == ".npz":
    np.savez(path, **state)
  else:
    import torch
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)


@pytest.fixture(scope="module")
def resnet18_logits():
  """Eval-mode logits of get_model('resnet18', num_classes=10) on fixed 32x32 images."""
  model = get_model("resnet18", num_classes=10)
  images = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
  apply = jax.jit(lambda v: model.apply(v, images, train=False))
  return lambda variables: np.asarray(apply(variables))


@pytest.mark.parametrize("extension", [
    ".safetensors", ".npz",
    pytest.param(".pth", marks=pytest.mark.skipif(not _HAS_TORCH, reason="needs torch"))])
def test_from_torchvision_loads_a_file_as_it_loads_the_mapping(
    extension, tmp_path, resnet18_state, resnet18_logits):
  path = tmp_path / f"resnet18{extension}"
  _save(resnet18_state, path)
  np.testing.assert_array_equal(
      resnet18_logits(from_torchvision("resnet18", path)),
      resnet18_logits(from_torchvision("resnet18", resnet18_state)))
  assert set(load_state_dict(str(path))) == set(resnet18_state)


def test_from_torchvision_strips_module_prefix_and_skips_num_batches_tracked(resnet18_state):
  assert "bn1.num_batches_tracked" in resnet18_state
  data_parallel = {f"module.{k}": v for k, v in resnet18_state.items()}
  expected = from_torchvision("resnet18", resnet18_state)
  actual = from_torchvision("resnet18", data_parallel)
  assert jax.tree.all(jax.tree.map(np.array_equal, actual, expected))


def test_from_torchvision_without_head_loads_a_headless_state_dict(resnet18_state):
  headless = {k: v for k, v in resnet18_state.items() if not k.startswith("fc.")}
  variables = from_torchvision("resnet18", headless, include_head=False)
  assert "head" not in variables["params"]
  full = from_torchvision("resnet18", resnet18_state)
  del full["params"]["head"]
  assert jax.tree.all(jax.tree.map(np.array_equal, variables, full))
  # A full state dict loads without its head too.
  variables = from_torchvision("resnet18", resnet18_state, include_head=False)
  assert "head" not in variables["params"]


def test_from_torchvision_checks_num_classes_against_fc_weight(resnet18_state):
  variables = from_torchvision("resnet18", resnet18_state, num_classes=10)
  assert variables["params"]["head"]["kernel"].shape == (512, 10)
  with pytest.raises(ValueError, match=r"num_classes=1000, but 'fc\.weight' .* has 10 rows"):
    from_torchvision("resnet18", resnet18_state, num_classes=1000)
  headless = {k: v for k, v in resnet18_state.items() if not k.startswith("fc.")}
  with pytest.raises(ValueError, match="missing key 'fc.weight'.*include_head=False"):
    from_torchvision("resnet18", headless)


def test_from_torchvision_names_only_the_first_missing_keys(resnet18_state):
  state = {k: v for k, v in resnet18_state.items() if k.startswith("fc.")}
  # resnet18 has 100 keys besides fc.weight and fc.bias (num_batches_tracked aside).
  with pytest.raises(ValueError, match=r"missing keys: (\S+, ){4}\S+ and 95 more\.$"):
    from_torchvision("resnet18", state)


def test_load_state_dict_names_a_missing_file_and_an_unknown_format(tmp_path):
  with pytest.raises(FileNotFoundError, match="resnet18.npz"):
    load_state_dict(tmp_path / "resnet18.npz")
  path = tmp_path / "resnet18.h5"
  path.write_bytes(b"")
  with pytest.raises(ValueError, match=r"resnet18\.h5.*\.safetensors, \.npz, \.pth or \.pt"):
    load_state_dict(path)


def test_load_state_dict_without_torch_says_how_to_convert_a_pth_file(tmp_path, monkeypatch):
  path = tmp_path / "resnet18.pth"
  path.write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  with pytest.raises(ImportError, match=r"(?s)pip install torch.*np\.savez\('.*resnet18\.npz'"):
    from_torchvision("resnet18", path)


def test_load_state_dict_reads_pth_with_torch_load_on_cpu_weights_only(tmp_path, monkeypatch):
  """The .pth path against a stand-in for torch (the real one runs where torch imports)."""
  path = tmp_path / "resnet18.pth"
  path.write_bytes(b"")
  calls = []

  class Tensor:
    def __init__(self, value, dtype="float32"):
      self.value, self.dtype = value, dtype

    def float(self):
      return Tensor(self.value.astype(np.float32))

    def numpy(self):
      assert self.dtype != "bfloat16", "numpy has no bfloat16"
      return self.value

  def load(f, **kwargs):
    calls.append((f, kwargs))
    return {"conv1.weight": Tensor(np.ones((64, 3, 7, 7), np.float32)),
            "fc.bias": Tensor(np.zeros(10), dtype="bfloat16")}

  fake_torch = type(sys)("torch")
  fake_torch.load, fake_torch.bfloat16, fake_torch.Tensor = load, "bfloat16", Tensor
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  state = load_state_dict(path)
  assert calls == [(str(path), {"map_location": "cpu", "weights_only": True})]
  assert state["conv1.weight"].shape == (64, 3, 7, 7)
  assert state["fc.bias"].dtype == np.float32

  fake_torch.load = lambda f, **kwargs: {"epoch": 3, "state_dict": {}}
  with pytest.raises(ValueError, match=r"resnet18\.pth' holds more than .*epoch, state_dict"):
    load_state_dict(path)
