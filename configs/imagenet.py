"""ImageNet training: `configs/imagenet.py:resnet18|resnet34|resnet50|resnet101|resnet152`.

  python train.py --config=configs/imagenet.py:resnet50 --workdir=workdirs/resnet50 \
      --config.data_dir=gs://BUCKET/tensorflow_datasets

The standard recipe: global batch 256 (scale it with --config.batch_size; the
learning rate follows as 0.1 x batch / 256), SGD momentum 0.9 (Nesterov with
--config.nesterov=True), 5 warmup epochs then cosine decay (or
--config.schedule=step for /10 at epochs 30, 60, 80), weight decay 1e-4 on
kernels, 90 epochs, bfloat16 compute, inception crop + flip at 224. Needs
`imagenet2012` prepared in TFDS's data_dir (manual download).
"""

import ml_collections

from configs import default

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def get_config(arg: str = "resnet50") -> ml_collections.ConfigDict:
  if arg not in MODELS:
    raise ValueError(f"configs/imagenet.py:{arg}: expected one of {MODELS}.")
  config = default.get_config()

  # What this experiment varies: the depth.
  config.model = arg

  config.dataset = "imagenet2012"
  config.image_size = 224
  config.dtype = "bfloat16"
  config.batch_size = 256
  config.eval_batch_size = 1024
  config.optimizer = "sgd"
  config.learning_rate = 0.1
  config.lr_base_batch_size = 256
  config.nesterov = False
  config.weight_decay = 1e-4
  config.label_smoothing = 0.0  # 0.1 is the common improvement.
  config.num_epochs = 90.0
  config.schedule = "cosine"
  config.warmup_epochs = 5.0
  config.lr_boundaries_epochs = (30, 60, 80)  # Used by --config.schedule=step.
  config.lr_decay_factor = 0.1
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000
  return config
