"""Fine-tuning in the trainer: config.init_from (state dict files, other runs), init_exclude,
freeze and freeze_batch_stats, on the embedded digits (8x8, one channel)."""

import logging

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from resnet_ln import data
from resnet_ln import train
from resnet_ln.models import from_torchvision
from resnet_ln.models.torchvision import _torch_key
from resnet_ln.train import build
from resnet_ln.train import optimizer as optimizer_lib
from resnet_ln.train import trainer
from resnet_ln.train import warm_start

NARROW = {"num_filters": 8}  # A ResNet-18 with 8 to 64 filters: 0.2M parameters.


def tiny_config(**overrides):
  config = default.get_config()
  config.update(dict(model="resnet18", batch_size=32, eval_batch_size=128, num_train_steps=4,
                     schedule="constant", warmup_epochs=0.0, learning_rate=0.05,
                     log_every_steps=1, checkpoint_every_steps=2, num_devices=2))
  config.model_kwargs = dict(NARROW)
  config.update(overrides)
  return config


def fresh_state(config):
  info = data.get_dataset_info(config)
  model = build.create_model(config, info)
  steps_per_epoch, num_steps = build.training_length(config, info)
  tx = optimizer_lib.create_optimizer(
      config, optimizer_lib.create_learning_rate_schedule(config, num_steps, steps_per_epoch))
  return model, build.initial_state(config, model, info, tx)


def torchvision_state_dict(config, num_classes, channels=1, seed=0):
  """Random weights for config's model in torchvision's layout: `num_classes` classes,
  images with `channels` channels."""
  model = build.create_model(
      config, data.DatasetInfo("digits", "classification", num_classes, (8, 8, channels), 1, 1,
                               "train", "test"))
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, channels)), train=False))
  rng = np.random.default_rng(seed)
  state = {}
  for path, shape in flax.traverse_util.flatten_dict(shapes, sep="/").items():
    value = (rng.uniform(0.5, 2.0, shape.shape) if path.endswith("var")
             else rng.normal(0, 0.1, shape.shape)).astype(np.float32)
    # Contiguous, as torch's tensors are: safetensors writes a view's buffer as it lies.
    state[_torch_key(path.split("/", 1)[1])] = np.ascontiguousarray(
        value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T)
  return state


def save(state, path):
  if path.suffix == ".npz":
    np.savez(path, **state)
  elif path.suffix == ".safetensors":
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file(state, str(path))
  else:
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pth"])
def test_init_from_a_state_dict_file_gives_from_torchvisions_first_forward_pass(tmp_path, suffix):
  # Torchvision's own widths, on RGB images.
  config = tiny_config(dataset="synthetic_image", image_size=16, num_classes=10)
  config.model_kwargs = ml_collections.ConfigDict()
  state = torchvision_state_dict(config, num_classes=10, channels=3)
  path = tmp_path / f"resnet18{suffix}"
  save(state, path)
  config.init_from = str(path)
  model, host_state = fresh_state(config)
  loaded = warm_start.load_initial_weights(config, model, host_state)
  images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
  ours = model.apply({"params": loaded.params, "batch_stats": loaded.batch_stats}, images,
                     train=False)
  theirs = model.apply(from_torchvision("resnet18", state), images, train=False)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_head_for_other_classes_is_reinitialised_and_logged(tmp_path, caplog):
  config = tiny_config()
  path = tmp_path / "imagenet_head.npz"
  save(torchvision_state_dict(config, num_classes=1000), path)
  config.init_from = str(path)
  model, host_state = fresh_state(config)
  # On absl's logger: a command run in this process before may have set it to WARNING.
  with caplog.at_level(logging.INFO, logger="absl"):
    loaded = warm_start.load_initial_weights(config, model, host_state)
  assert "reinitialised params/head/kernel: shape (64, 1000) in source, (64, 10) in model" \
      in caplog.text
  np.testing.assert_array_equal(loaded.params["head"]["kernel"],
                                host_state.params["head"]["kernel"])
  assert not np.array_equal(loaded.params["stem_conv"]["kernel"],
                            host_state.params["stem_conv"]["kernel"])


def test_weights_of_another_model_are_a_clear_error(tmp_path):
  path = tmp_path / "resnet34.npz"
  save(torchvision_state_dict(tiny_config(model="resnet34"), num_classes=10), path)
  config = tiny_config(init_from=str(path))
  model, host_state = fresh_state(config)
  with pytest.raises(ValueError, match=r"init_from=.*resnet34.npz.*Not in the model: "
                     r"batch_stats/stage1_block2/norm1/mean"):
    warm_start.load_initial_weights(config, model, host_state)


def test_freeze_keeps_matching_parameters_and_statistics_bitwise_fixed(tmp_path):
  config = tiny_config(freeze="^stage[1-3]", freeze_batch_stats=True)
  _, initial = fresh_state(config)
  train.train_and_evaluate(config, str(tmp_path))
  final = train.load_variables(str(tmp_path))
  for collection in ("params", "batch_stats"):
    before = flax.traverse_util.flatten_dict(getattr(initial, collection), sep="/")
    after = flax.traverse_util.flatten_dict(final[collection], sep="/")
    for path, value in before.items():
      if path.startswith(("stage1", "stage2", "stage3")):
        np.testing.assert_array_equal(after[path], value, err_msg=path)
      else:
        assert not np.array_equal(after[path], value), path


def test_init_from_another_workdir_or_checkpoint_starts_from_its_weights(tmp_path):
  source = str(tmp_path / "source")
  train.train_and_evaluate(tiny_config(), source)
  trained = train.load_variables(source)
  for init_from in (source, f"{source}/checkpoints/4"):
    # A zero learning rate leaves the parameters where the source left them.
    workdir = str(tmp_path / f"from_{init_from.count('/')}")
    train.train_and_evaluate(tiny_config(init_from=init_from, learning_rate=0.0,
                                         num_train_steps=1), workdir)
    jax.tree.map(np.testing.assert_array_equal, train.load_variables(workdir)["params"],
                 trained["params"])


def test_a_preempted_finetuning_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
  config = tiny_config()
  path = tmp_path / "weights.safetensors"
  save(torchvision_state_dict(config, num_classes=1000), path)
  overrides = dict(init_from=str(path), freeze="^stage1", num_train_steps=6)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(tiny_config(**overrides), straight)

  resumed = str(tmp_path / "resumed")
  calls = iter(range(100))
  # SIGTERM during step 3: the loop saves step 3 and stops.
  monkeypatch.setattr(trainer._Preemption, "agreed", lambda self: next(calls) == 2)
  assert train.train_and_evaluate(tiny_config(**overrides), resumed) == {"step": 3}
  monkeypatch.undo()
  assert train.train_and_evaluate(tiny_config(**overrides), resumed)["step"] == 6
  jax.tree.map(np.testing.assert_array_equal, train.load_variables(resumed),
               train.load_variables(straight))


def test_bad_freeze_or_init_from_values_are_config_errors(tmp_path):
  with pytest.raises(train.ConfigError, match=r"config.freeze='\[stage' is not a regular"):
    train.train_and_evaluate(tiny_config(freeze="[stage"), str(tmp_path / "a"))
  with pytest.raises(train.ConfigError, match=r"config.init_from='/no/such.safetensors'.*no "
                     "such file"):
    train.train_and_evaluate(tiny_config(init_from="/no/such.safetensors"), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="Freeze regex 'stagee1' matches no parameter path"):
    train.train_and_evaluate(tiny_config(freeze="stagee1"), str(tmp_path / "c"))
