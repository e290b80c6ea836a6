"""The paper's CIFAR-10 experiments (section 4.2): `configs/cifar.py:resnet20` ... `resnet1202`,
`plain20` ... `plain110`.

  python train.py --config=configs/cifar.py:resnet56 --workdir=workdirs/cifar_resnet56

Batch 128, SGD momentum 0.9, weight decay 1e-4, learning rate 0.1 divided by 10
at 32k and 48k iterations, 64k iterations, pad-4 random crop and flip. ResNet-110
and deeper first train at 0.01 for 400 iterations, as in the paper. Residual
branches are not zero-initialised (the paper's initialisation); option A shortcuts.
Needs `cifar10` in TFDS's data_dir.
"""

import ml_collections

from configs import default


def get_config(arg: str = "resnet20") -> ml_collections.ConfigDict:
  kind, depth = arg.rstrip("0123456789"), int(arg[len(arg.rstrip("0123456789")):] or 0)
  if kind not in ("resnet", "plain") or depth < 8 or (depth - 2) % 6:
    raise ValueError(f"configs/cifar.py:{arg}: expected resnetN or plainN with N = 6n + 2 "
                     "(20, 32, 44, 56, 110, 1202), e.g. resnet56.")
  config = default.get_config()

  # What this experiment varies: the depth, and shortcuts or none.
  config.model = f"cifar_{kind}{depth}"
  config.model_kwargs = ml_collections.ConfigDict({"zero_init_residual": False})

  config.dataset = "cifar10"
  config.batch_size = 128
  config.eval_batch_size = 500
  config.optimizer = "sgd"
  config.nesterov = False
  config.weight_decay = 1e-4
  config.weight_decay_all = True  # The paper decays every parameter, norms and biases too.
  config.num_train_steps = 64_000
  config.schedule = "piecewise"
  config.warmup_epochs = 0.0
  if depth >= 110:
    config.learning_rate = 0.01
    config.lr_boundaries = (400, 32_000, 48_000)
    config.lr_factors = (10.0, 0.1, 0.1)
  else:
    config.learning_rate = 0.1
    config.lr_boundaries = (32_000, 48_000)
    config.lr_factors = (0.1, 0.1)
  config.log_every_steps = 100
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config
