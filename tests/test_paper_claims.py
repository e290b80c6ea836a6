"""scripts/paper_claims.py: the invariance table against the paper, the response capture, and
the degradation runs' definitions."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "paper_claims", os.path.join(ROOT, "scripts", "paper_claims.py"))
paper_claims = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_claims)

I, N = "invariant", "not invariant"
# Layer Normalization (Ba et al. 2016), Table 1, columns in paper_claims.TRANSFORMATIONS order.
PAPER_TABLE_1 = {
    "BatchNorm": (I, N, I, I, I, N),
    "WeightNorm": (I, N, I, N, N, N),
    "LayerNorm": (I, I, N, I, N, I),
}


@pytest.mark.parametrize("seed", [0, 1])
def test_invariance_table_matches_paper_table_1(seed):
  table = paper_claims.invariance_table(paper_claims.invariance_changes(seed=seed))
  measured = {method: tuple(row[name] for name in paper_claims.TRANSFORMATIONS)
              for method, row in table.items()}
  assert measured == PAPER_TABLE_1


def test_invariance_decisions_have_margin():
  """Every change is far from the tolerance: the decision does not hinge on its value."""
  changes = paper_claims.invariance_changes(seed=0)
  for row in changes.values():
    for change in row.values():
      assert change < paper_claims.INVARIANCE_TOLERANCE / 4 or change > 0.1


def test_norm_outputs_of_resnet20_are_its_19_3x3_layers_in_order():
  import jax  # pylint: disable=import-outside-toplevel

  from resnet_ln.models import CifarResNet  # pylint: disable=import-outside-toplevel
  from resnet_ln.models.responses import norm_outputs  # pylint: disable=import-outside-toplevel

  model = CifarResNet(20)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jax.numpy.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  outputs = jax.eval_shape(lambda v, x: norm_outputs(model, v, x), variables, images)
  # (eval_shape returns the dict with sorted keys; the order is checked below.)
  assert sorted(outputs) == sorted(
      ["stem_norm"] + [f"stage{i}_block{j}/norm{k}" for i in (1, 2, 3) for j in (0, 1, 2)
                       for k in (1, 2)])  # The stem and 9 blocks x 2 convs: 19.
  assert outputs["stem_norm"].shape == (2, 32, 32, 16)
  assert outputs["stage3_block2/norm2"].shape == (2, 8, 8, 64)
  without_stem = jax.eval_shape(lambda v, x: norm_outputs(model, v, x, include_stem=False),
                                variables, images)
  assert sorted(without_stem) == sorted(set(outputs) - {"stem_norm"})


def test_layer_responses_matches_hand_computed_stem():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from resnet_ln.models import CifarResNet  # pylint: disable=import-outside-toplevel
  from resnet_ln.models import layer_responses  # pylint: disable=import-outside-toplevel

  model = CifarResNet(8, zero_init_residual=False)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 3))
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(1), x, train=False), images)
  # Random variables, none at its init value (positive: running variances stay valid).
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  variables = jax.tree_util.tree_unflatten(treedef, [
      jax.random.uniform(key, leaf.shape, minval=0.1, maxval=1.0)
      for leaf, key in zip(leaves, keys)])

  stds = layer_responses(model, variables, images)
  assert list(stds) == ["stem_norm", "stage1_block0/norm1", "stage1_block0/norm2",
                        "stage2_block0/norm1", "stage2_block0/norm2",
                        "stage3_block0/norm1", "stage3_block0/norm2"]
  kernel = variables["params"]["stem_conv"]["kernel"]
  scale, bias = (variables["params"]["stem_norm"][k] for k in ("scale", "bias"))
  mean, var = (variables["batch_stats"]["stem_norm"][k] for k in ("mean", "var"))
  conv = jax.lax.conv_general_dilated(images, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  response = np.asarray((conv - mean) / jnp.sqrt(var + 1e-5) * scale + bias)
  expected = np.mean(np.std(response.reshape(-1, response.shape[-1]), axis=0))
  np.testing.assert_allclose(stds["stem_norm"], expected, rtol=1e-5)


def test_layer_responses_refuses_a_net_without_norms():
  import jax  # pylint: disable=import-outside-toplevel

  from resnet_ln.models import CifarPlain  # pylint: disable=import-outside-toplevel
  from resnet_ln.models import layer_responses  # pylint: disable=import-outside-toplevel

  model = CifarPlain(8, norm=None)
  images = jax.numpy.ones((1, 8, 8, 3))
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  with pytest.raises(ValueError, match="no block norms"):
    layer_responses(model, variables, images)


def test_magnitude_task_label_is_invisible_to_the_ln_lstm_only():
  """The LN-LSTM gives a sequence times 0.5 and times 2 the same logits; the LSTM does not."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from resnet_ln.models import SequenceClassifier  # pylint: disable=import-outside-toplevel

  z = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4))
  low, high = (scale * z for scale in paper_claims.MAGNITUDE_SCALES)
  for layer_norm in (True, False):
    model = SequenceClassifier(num_classes=2, features=8, layer_norm=layer_norm)
    variables = model.init(jax.random.PRNGKey(1), z)
    change = np.abs(model.apply(variables, high) - model.apply(variables, low)).max()
    assert (change < 1e-4) == layer_norm, (layer_norm, change)


def test_degradation_runs_are_plain_and_residual_nets_at_20_56_110_with_one_recipe():
  runs = paper_claims.degradation_runs(steps=300, batch_size=128)
  assert sorted(config.model for config in runs.values()) == sorted(
      f"cifar_{kind}{depth}" for kind in ("plain", "resnet") for depth in (20, 56, 110))
  for config in runs.values():
    assert config.dataset == "digits" and config.num_train_steps == 300
    assert not config.model_kwargs.zero_init_residual  # The paper's initialisation.
    assert config.batch_size == 128 and config.seed == 0


def test_only_the_110_layer_nets_warm_up_at_a_tenth_of_the_rate():
  """0.01 for the first 5% of the steps, then the others' 0.1 and the same divisions by 10."""
  from resnet_ln.train import optimizer  # pylint: disable=import-outside-toplevel

  runs = paper_claims.degradation_runs(steps=300, batch_size=128)
  rates = {name: [float(optimizer.create_learning_rate_schedule(config, 300, 12)(step))
                  for step in (0, 14, 15, 149, 150, 225)]
           for name, config in runs.items()}
  for name, rate in rates.items():
    expected = [0.1, 0.1, 0.1, 0.1, 0.01, 0.001]
    if name.endswith("110"):
      expected[:2] = [0.01, 0.01]
    assert rate == pytest.approx(expected), name
  # responses warms up its ResNet-110 the same way: one mechanism.
  assert paper_claims.responses_runs(300, 128)["digits32_resnet110"].lr_boundaries == (
      runs["digits_resnet110"].lr_boundaries)
