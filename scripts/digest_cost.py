"""Times the integrity check of a checkpoint restore for an ImageNet ResNet-50.

  python scripts/digest_cost.py

Builds arrays shaped like ResNet-50's train state (parameters, SGD momentum,
BatchNorm statistics: about 205 MB of float32), then times `verify`, which
every restore runs: the SHA-256 of each array, compared with the recorded ones.
Prints the median of five runs.
"""

import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from resnet_ln.models import get_model
from resnet_ln.train import checkpoint


def main() -> None:
  model = get_model("resnet50", num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  rng = np.random.default_rng(0)
  random = lambda s: rng.standard_normal(s.shape, np.float32)
  state = {"params": jax.tree.map(random, shapes["params"]),
           "momentum": jax.tree.map(random, shapes["params"]),
           "batch_stats": jax.tree.map(random, shapes["batch_stats"])}
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  num_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  recorded = checkpoint.array_digests(state)
  times = []
  for _ in range(5):
    start = time.perf_counter()
    checkpoint.verify(recorded, state, "resnet50")
    times.append(time.perf_counter() - start)
  print(f"ResNet-50: {num_params:,} parameters, state {num_bytes / 1e6:.0f} MB: verify takes "
        f"{np.median(times):.3f} s (median of 5).")


if __name__ == "__main__":
  main()
