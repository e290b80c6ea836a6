"""Fine-tuning an ImageNet ResNet on your own images: `configs/finetune.py:resnet18|resnet50`.

  python train.py --config=configs/finetune.py:resnet50 --workdir=workdirs/pets \\
      --config.dataset=image_folder:/data/pets \\
      --config.init_from=/models/resnet50.safetensors

`init_from` is a torchvision-layout state dict: torchvision's own weights saved
with `safetensors.torch.save_file(model.state_dict(), "resnet50.safetensors")`,
or timm's `resnet50.tv_in1k` / `resnet18.tv_in1k` files from the Hugging Face hub
(torchvision's key names). The classifier is re-initialised for the folder's
classes (the log lists it). Images are normalised with ImageNet's mean and std,
as those weights expect. SGD momentum 0.9 at 0.01 for batch 64 (scaled with the
batch), 1 warmup epoch then cosine decay over 10 epochs, weight decay 1e-4,
label smoothing 0.1; on a GPU add `--config.dtype=bfloat16`. For a linear probe
add `--config.freeze='^(?!head)' --config.freeze_batch_stats=True`.

Expect the first epoch to beat training from scratch by a wide margin on a few
thousand images; most of the gain is in the first two epochs.
"""

import ml_collections
from ml_collections import config_dict

from configs import default

MODELS = ("resnet18", "resnet50")


def get_config(arg: str = "resnet50") -> ml_collections.ConfigDict:
  if arg not in MODELS:
    raise ValueError(f"configs/finetune.py:{arg}: expected one of {MODELS}.")
  config = default.get_config()

  # What this experiment varies: the pretrained network, and your data.
  config.model = arg
  config.dataset = config_dict.placeholder(str)  # Required: image_folder:PATH (or a TFDS name).
  config.init_from = config_dict.placeholder(str)  # Required: the .safetensors file.

  config.image_size = 224
  config.batch_size = 64
  config.eval_batch_size = 128
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.lr_base_batch_size = 64
  config.nesterov = False
  config.weight_decay = 1e-4
  config.label_smoothing = 0.1
  config.schedule = "cosine"
  config.warmup_epochs = 1.0
  config.num_epochs = 10.0
  config.log_every_steps = 20
  config.checkpoint_every_steps = 500
  return config
