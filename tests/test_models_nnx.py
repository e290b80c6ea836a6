"""The registered models as NNX modules: same variables, same outputs, BatchNorm updates."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import resnet_ln.nnx
from resnet_ln.models import get_model

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def test_nnx_resnet_has_the_linen_variables_and_outputs():
  model = resnet_ln.nnx.get_model("cifar_resnet8", IMAGES[:1], rngs=nnx.Rngs(0))
  linen = get_model("cifar_resnet8")
  shapes = jax.eval_shape(lambda: linen.init(jax.random.key(0), IMAGES))
  nnx_variables = resnet_ln.nnx.variables(model)
  assert jax.tree.map(lambda x: x.shape, nnx_variables) == jax.tree.map(lambda x: x.shape, shapes)
  np.testing.assert_allclose(model(IMAGES), linen.apply(nnx_variables, IMAGES), rtol=1e-5)
  features = model(IMAGES, method="features")
  assert features["stage3"].shape == (2, 4, 4, 64)


def test_linen_variables_load_into_the_nnx_module_and_batch_stats_update_in_place():
  model = resnet_ln.nnx.get_model("cifar_resnet8", IMAGES[:1], rngs=nnx.Rngs(0))
  linen = get_model("cifar_resnet8")
  linen_variables = jax.jit(linen.init)(jax.random.key(7), IMAGES)
  resnet_ln.nnx.load_variables(model, linen_variables)
  np.testing.assert_allclose(model(IMAGES), linen.apply(linen_variables, IMAGES), rtol=1e-5)

  _, updates = linen.apply(linen_variables, IMAGES, train=True, mutable=["batch_stats"])
  model(IMAGES, train=True, mutable=["batch_stats"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               resnet_ln.nnx.variables(model)["batch_stats"], updates["batch_stats"])


def test_nnx_char_lm_gives_per_step_logits():
  tokens = jnp.zeros((1, 5), jnp.int32)
  model = resnet_ln.nnx.get_model(
      "char_lm", tokens, rngs=nnx.Rngs(0), vocab_size=7, embed_dim=4, features=8)
  assert model(tokens).shape == (1, 5, 7)
  assert set(resnet_ln.nnx.variables(model)) == {"params"}
