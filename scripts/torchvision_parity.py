"""Checks `from_torchvision` against torchvision itself (needs torch and torchvision).

  python scripts/torchvision_parity.py --models resnet18 resnet50 --image-size 224

Builds each torchvision ResNet with random weights and random BatchNorm running
statistics, loads its state_dict with `resnet_ln.models.from_torchvision`, and
compares eval-mode logits on the same random images in float32. Prints the
relative error ||flax - torch|| / ||torch|| per model; exits 1 above --tolerance.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Compare float32 on the CPU: no TF32.

import jax
import numpy as np
import torch
import torchvision

from resnet_ln.models import from_torchvision, get_model


def relative_error(name: str, image_size: int, batch: int, seed: int) -> float:
  torch.manual_seed(seed)
  net = getattr(torchvision.models, name)(weights=None).eval()
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.normal_(1, 0.2)  # torchvision zero-inits none of them by default.
        module.bias.normal_(0, 0.2)
  images = torch.randn(batch, 3, image_size, image_size)
  with torch.no_grad():
    expected = net(images).numpy()
  variables = from_torchvision(name, {k: v.numpy() for k, v in net.state_dict().items()})
  logits = get_model(name).apply(variables, images.numpy().transpose(0, 2, 3, 1), train=False)
  return float(np.linalg.norm(np.asarray(logits) - expected) / np.linalg.norm(expected))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tolerance", type=float, default=1e-4)
  args = parser.parse_args()
  print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, jax {jax.__version__}")
  worst = 0.0
  for name in args.models:
    error = relative_error(name, args.image_size, args.batch, args.seed)
    worst = max(worst, error)
    print(f"{name}: relative error {error:.2e} at {args.image_size}x{args.image_size}, "
          f"batch {args.batch}")
  return 0 if worst < args.tolerance else 1


if __name__ == "__main__":
  sys.exit(main())
