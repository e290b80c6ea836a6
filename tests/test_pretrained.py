"""Tests of loading pretrained weights: load_pretrained, merge_variables,
replace_head and trainable_mask (with optax, as a fine-tuning run uses them)."""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_ln.models import from_torchvision
from resnet_ln.models import get_model
from resnet_ln.models import load_pretrained
from resnet_ln.models import merge_variables
from resnet_ln.models import replace_head
from resnet_ln.models import trainable_mask

_TORCH_MODULES = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc",
                  "proj_conv": "downsample.0", "proj_norm": "downsample.1"}
_TORCH_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
                 "mean": "running_mean", "var": "running_var"}


def _torch_name(path):
  """('batch_stats', 'stage2_block0', 'proj_norm', 'mean')
  -> 'layer2.0.downsample.1.running_mean'."""
  _, *modules, leaf = path
  names = []
  for module in modules:
    block = re.fullmatch(r"stage(\d+)_block(\d+)", module)
    names.append(f"layer{block[1]}.{block[2]}" if block
                 else _TORCH_MODULES.get(module, module.replace("norm", "bn")))
  return ".".join(names + [_TORCH_LEAVES[leaf]])


def _random_variables(model, channels=3, seed=1):
  """Variables of `model` (for images with `channels`) with random values: a cheap
  stand-in for `model.init` (positive BatchNorm variances)."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, channels)), train=False))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, shape: (rng.uniform(0.5, 2.0, shape.shape) if path[-1].key == "var"
                           else rng.normal(0, 0.1, shape.shape)).astype(np.float32),
      shapes)


def _torchvision_state(name, num_classes=1000):
  """A torchvision-layout state dict with random values for `get_model(name)`."""
  state = {}
  variables = _random_variables(get_model(name, num_classes=num_classes), seed=0)
  for path, value in flax.traverse_util.flatten_dict(variables).items():
    state[_torch_name(path)] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    if path[-1] == "var":
      state[_torch_name(path).replace("running_var", "num_batches_tracked")] = np.array(10)
  return state


def _flat(variables):
  return flax.traverse_util.flatten_dict(variables, sep="/")


@pytest.fixture(scope="module")
def resnet18_imagenet():
  """A 1000-class resnet18 state dict."""
  return _torchvision_state("resnet18")


@pytest.fixture(scope="module")
def resnet18_10():
  """(model, fresh variables) of a 10-class resnet18."""
  model = get_model("resnet18", num_classes=10)
  return model, _random_variables(model)


def test_load_pretrained_keeps_fresh_head_for_other_num_classes(resnet18_imagenet, resnet18_10):
  model, fresh = resnet18_10
  variables, report = load_pretrained(model, resnet18_imagenet, fresh)

  assert report.reinitialised == {
      "params/head/kernel": "shape (512, 1000) in source, (512, 10) in model",
      "params/head/bias": "shape (1000,) in source, (10,) in model"}
  assert report.missing == ()
  assert len(report.loaded) == len(_flat(fresh)) - 2
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"],
                                fresh["params"]["head"]["kernel"])
  # The backbone is what from_torchvision reads from the same state dict.
  expected = _flat(from_torchvision("resnet18", resnet18_imagenet))
  for path in report.loaded:
    np.testing.assert_array_equal(_flat(variables)[path], expected[path], err_msg=path)
  assert "2 reinitialised" in str(report) and "params/head/kernel: shape" in str(report)


def test_load_pretrained_exclude_keeps_matching_variables_fresh(resnet18_imagenet, resnet18_10):
  model, fresh = resnet18_10
  variables, report = load_pretrained(model, resnet18_imagenet, fresh, exclude=r"^stage4|^stem")

  assert report.reinitialised["params/stage4_block1/conv2/kernel"] == "excluded"
  assert report.reinitialised["batch_stats/stem_norm/mean"] == "excluded"
  assert report.reinitialised["params/head/kernel"].startswith("shape")
  assert "params/stage3_block1/conv2/kernel" in report.loaded
  flat, fresh_flat = _flat(variables), _flat(fresh)
  for path in report.reinitialised:
    np.testing.assert_array_equal(flat[path], fresh_flat[path], err_msg=path)


def test_load_pretrained_needs_exclude_for_what_the_source_lacks(resnet18_imagenet, resnet18_10):
  model, fresh = resnet18_10
  headless = {k: v for k, v in resnet18_imagenet.items() if not k.startswith("fc.")}
  with pytest.raises(ValueError, match=r"Not in the source: params/head/bias, params/head/kernel "):
    load_pretrained(model, headless, fresh)
  _, report = load_pretrained(model, headless, fresh, exclude="^head/")
  assert report.missing == ("params/head/bias", "params/head/kernel")
  assert report.reinitialised == {}


def test_load_pretrained_rejects_resnet50_weights_for_resnet18(resnet18_10):
  model, fresh = resnet18_10
  # resnet50 has every resnet18 key, and bottleneck ones resnet18 lacks.
  with pytest.raises(ValueError, match=r"Not in the model: batch_stats/stage1_block0/norm3/mean, "
                                       r"[^.]* and \d+ more\.$"):
    load_pretrained(model, _torchvision_state("resnet50"), fresh)


def test_load_pretrained_names_keys_no_torchvision_resnet_has(resnet18_imagenet, resnet18_10):
  model, fresh = resnet18_10
  state = {**resnet18_imagenet, "classifier.weight": np.zeros((10, 512))}
  with pytest.raises(ValueError, match=r"Not torchvision ResNet keys: classifier\.weight\."):
    load_pretrained(model, state, fresh)


def test_load_pretrained_keeps_a_fresh_stem_for_one_channel_images(resnet18_imagenet):
  model = get_model("resnet18", num_classes=10)
  fresh = _random_variables(model, channels=1)
  variables, report = load_pretrained(model, resnet18_imagenet, fresh)
  assert report.reinitialised["params/stem_conv/kernel"] == (
      "shape (7, 7, 3, 64) in source, (7, 7, 1, 64) in model")
  assert set(report.reinitialised) == {
      "params/stem_conv/kernel", "params/head/kernel", "params/head/bias"}
  assert model.apply(variables, jnp.ones((2, 32, 32, 1)), train=False).shape == (2, 10)


def test_load_pretrained_reads_a_file(tmp_path, resnet18_imagenet, resnet18_10):
  model, fresh = resnet18_10
  np.savez(tmp_path / "resnet18.npz", **resnet18_imagenet)
  from_file, _ = load_pretrained(model, tmp_path / "resnet18.npz", fresh)
  from_mapping, _ = load_pretrained(model, resnet18_imagenet, fresh)
  assert jax.tree.all(jax.tree.map(np.array_equal, from_file, from_mapping))


def test_load_pretrained_refuses_a_bottleneck_that_strides_its_1x1_conv(resnet18_imagenet):
  model = get_model("resnet50", stride_on_3x3=False)
  with pytest.raises(ValueError, match="stride_on_3x3=True"):
    load_pretrained(model, resnet18_imagenet, {})


def test_exclude_that_matches_nothing_is_an_error(resnet18_imagenet, resnet18_10):
  model, fresh = resnet18_10
  with pytest.raises(ValueError, match=r"exclude='\^layer4' matches no variable path"):
    load_pretrained(model, resnet18_imagenet, fresh, exclude="^layer4")


def test_merge_variables_loads_flat_flax_variables_of_a_checkpoint(resnet18_10):
  model, fresh = resnet18_10
  checkpoint = _random_variables(model, seed=7)
  variables, report = merge_variables(fresh, _flat(checkpoint))
  assert len(report.loaded) == len(_flat(fresh)) and not report.reinitialised
  assert jax.tree.all(jax.tree.map(np.array_equal, variables, checkpoint))


def test_replace_head_gives_a_fresh_head_of_num_classes(resnet18_imagenet):
  variables = from_torchvision("resnet18", resnet18_imagenet)
  replaced = replace_head(variables, 10, jax.random.key(3))
  kernel, bias = replaced["params"]["head"]["kernel"], replaced["params"]["head"]["bias"]
  assert kernel.shape == (512, 10) and kernel.dtype == jnp.float32
  np.testing.assert_array_equal(bias, np.zeros(10))
  # lecun_normal, as flax's Dense: variance 1 / fan_in.
  assert abs(float(np.std(kernel)) * np.sqrt(512) - 1) < 0.1
  assert replaced["params"]["stage1_block0"] is variables["params"]["stage1_block0"]
  assert replaced["batch_stats"] is variables["batch_stats"]
  logits = get_model("resnet18", num_classes=10).apply(replaced, jnp.ones((2, 32, 32, 3)),
                                                      train=False)
  assert logits.shape == (2, 10)


@pytest.mark.parametrize("name, features", [("resnet18", 512), ("resnet50", 2048)])
def test_replace_head_adds_a_head_to_headless_variables(name, features):
  shapes = jax.eval_shape(
      lambda: from_torchvision(name, _torchvision_state(name), include_head=False))
  replaced = jax.eval_shape(lambda: replace_head(shapes, 7, jax.random.key(0)))
  assert replaced["params"]["head"]["kernel"].shape == (features, 7)
  assert replaced["params"]["head"]["bias"].shape == (7,)


def test_trainable_mask_freezes_paths_the_regex_matches(resnet18_10):
  _, fresh = resnet18_10
  params = fresh["params"]
  mask = _flat(trainable_mask(params, r"^stage[1-3]"))
  assert not mask["stage1_block0/conv1/kernel"] and not mask["stage3_block1/norm2/bias"]
  assert mask["stage4_block0/proj_conv/kernel"] and mask["stem_conv/kernel"]
  assert mask["head/kernel"]

  mask = _flat(trainable_mask(params, r"^(?!head)"))
  assert sorted(path for path, trainable in mask.items() if trainable) == [
      "head/bias", "head/kernel"]
  assert all(jax.tree.leaves(trainable_mask(params, None)))
  frozen_dict = flax.core.freeze(params)
  assert (jax.tree.structure(trainable_mask(frozen_dict, "^head"))
          == jax.tree.structure(frozen_dict))
  with pytest.raises(ValueError, match=r"'\^layer1' matches no parameter path"):
    trainable_mask(params, "^layer1")


def test_multi_transform_with_trainable_mask_leaves_frozen_variables_bitwise_unchanged():
  model = get_model("cifar_resnet8")
  variables = _random_variables(model)
  freeze = r"^stage[1-3]"
  labels = jax.tree.map(lambda trainable: "train" if trainable else "freeze",
                        trainable_mask(variables["params"], freeze))
  tx = optax.multi_transform(
      {"train": optax.sgd(0.1, momentum=0.9), "freeze": optax.set_to_zero()}, labels)
  keep_stats = trainable_mask(variables["batch_stats"], freeze)
  images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  targets = jnp.arange(8) % 10

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
      return loss, updates["batch_stats"]

    grads, new_stats = jax.grad(loss_fn, has_aux=True)(params)
    # train=True moves the statistics of frozen blocks too: keep their old ones.
    new_stats = jax.tree.map(lambda keep, new, old: new if keep else old,
                             keep_stats, new_stats, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  for _ in range(3):
    params, batch_stats, opt_state = step(params, batch_stats, opt_state)

  before = _flat(variables)
  after = _flat({"params": params, "batch_stats": batch_stats})
  frozen = [path for path in before if re.match(r"\w+/stage[1-3]", path)]
  assert frozen and len(frozen) < len(before)
  for path in before:
    if path in frozen:
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    else:
      assert not np.array_equal(after[path], before[path]), path
