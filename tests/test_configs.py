"""Every shipped config validates, builds its model, and schedules the paper's learning rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import charlm
from configs import cifar
from configs import default
from configs import imagenet
from resnet_ln.data import DatasetInfo
from resnet_ln.train import build
from resnet_ln.train import optimizer as optimizer_lib
from resnet_ln.train import trainer
from resnet_ln.train.validation import validate_config

IMAGENET = DatasetInfo("imagenet2012", "classification", 1000, (224, 224, 3), 1_281_167, 50_000,
                       "train", "validation")
CIFAR = DatasetInfo("cifar10", "classification", 10, (32, 32, 3), 50_000, 10_000, "train", "test")
DIGITS = DatasetInfo("digits", "classification", 10, (8, 8, 1), 1_442, 355, "train", "test")
TEXT = DatasetInfo("pydoc_topics", "language_modeling", 256, (128,), 3_277, 363, "train",
                   "validation")

CONFIGS = [
    (default.get_config(), DIGITS),
    *[(imagenet.get_config(arg), IMAGENET) for arg in imagenet.MODELS],
    # ResNet-1202 takes a minute to trace: its depth is tested in test_resnet.py.
    *[(cifar.get_config(f"resnet{d}"), CIFAR) for d in (20, 32, 44, 56, 110)],
    *[(cifar.get_config(f"plain{d}"), CIFAR) for d in (20, 32, 44, 56, 110)],
    *[(charlm.get_config(arg), TEXT) for arg in charlm.ARGS],
]


@pytest.mark.parametrize("config, info", CONFIGS, ids=lambda c: getattr(c, "model", ""))
def test_config_validates_and_its_model_takes_the_dataset(config, info):
  validate_config(config)
  model = trainer.create_model(config, info)
  batch = jnp.zeros((2, *info.example_shape),
                    jnp.float32 if info.task == "classification" else jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  logits = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  per_example = () if info.task == "classification" else info.example_shape  # Per token.
  assert logits.shape == (2, *per_example, info.num_classes)


def test_default_config_is_the_offline_main_job():
  config = default.get_config()
  assert (config.dataset, config.model, config.parallelism) == ("digits", "cifar_resnet20",
                                                                "pmap")


def _learning_rates(config, info, steps):
  steps_per_epoch, num_train_steps = build.training_length(config, info)
  schedule = optimizer_lib.create_learning_rate_schedule(config, num_train_steps, steps_per_epoch)
  return np.array([schedule(s) for s in steps]), steps_per_epoch, num_train_steps


def test_imagenet_recipe_scales_the_rate_with_the_batch_and_warms_up_for_5_epochs():
  config = imagenet.get_config("resnet50")
  config.batch_size = 1024
  steps_per_epoch = IMAGENET.num_train // 1024
  rates, _, total = _learning_rates(config, IMAGENET, [0, 5 * steps_per_epoch])
  np.testing.assert_allclose(rates, [0.0, 0.4], rtol=1e-6)
  assert total == 90 * steps_per_epoch
  config.schedule = "step"
  epochs = [10, 29.9, 30.1, 60.1, 80.1]
  rates, _, _ = _learning_rates(config, IMAGENET, [int(e * steps_per_epoch) for e in epochs])
  np.testing.assert_allclose(rates, [0.4, 0.4, 0.04, 0.004, 0.0004], rtol=1e-5)


@pytest.mark.parametrize("depth, first_rate", [(56, 0.1), (110, 0.01)])
def test_cifar_recipe_is_the_papers(depth, first_rate):
  config = cifar.get_config(f"resnet{depth}")
  rates, _, total = _learning_rates(config, CIFAR, [0, 399, 400, 31_999, 32_000, 48_000])
  np.testing.assert_allclose(rates, [first_rate, first_rate, 0.1, 0.1, 0.01, 0.001], rtol=1e-5)
  assert total == 64_000 and config.batch_size == 128 and config.weight_decay == 1e-4


@pytest.mark.parametrize("module, arg", [(cifar, "resnet21"), (cifar, "densenet40"),
                                         (charlm, "gru"), (imagenet, "resnet200")])
def test_an_unknown_config_argument_is_a_clear_error(module, arg):
  with pytest.raises(ValueError, match=arg):
    module.get_config(arg)

