"""What a throughput run builds and feeds: the options, and each model's workload.

A workload is a real trainer config (`configs/default.py` with the model, the
batch and the optimiser of the trainer's own configs) and the `DatasetInfo` of
its synthetic data, so the benchmark builds exactly what `train.py` builds.
"""

import dataclasses
import re
from typing import Any

import ml_collections

from configs import default
from resnet_ln.data.info import DatasetInfo

VOCAB_SIZE = 256  # Bytes, as the character datasets.
SEQUENCE_CLASSES = 10
SEQUENCE_MODELS = ("char_lm", "seq_classifier")
# Schedules are evaluated this far: the schedule's position does not change the cost of a step.
SCHEDULE_STEPS = 100_000

# The optimiser fields of the trainer's configs (configs/imagenet.py, configs/charlm.py).
SGD = dict(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
           weight_decay=1e-4, schedule="cosine", warmup_steps=100)
ADAMW = dict(optimizer="adamw", learning_rate=2e-3, weight_decay=0.0, grad_clip_norm=1.0,
             schedule="constant")


@dataclasses.dataclass(frozen=True)
class Options:
  """What to run; the command-line flags of `python -m bench.throughput`."""

  model: str = "resnet50"
  batch_size: int = 0  # Global; 0: 256 ImageNet, 128 CIFAR, 32 sequence models.
  dtype: str = "float32"
  parallelism: str = "pmap"
  num_devices: int = 0  # 0: all devices.
  steps: int = 50  # Per window.
  windows: int = 5
  warmup: int = 5
  image_size: int = 0  # 0: 224 for ImageNet nets, 32 for CIFAR nets.
  seq_len: int = 128
  embed_dim: int = 64
  features: int = 256
  num_layers: int = 1
  unroll: int = 1  # Scan unroll factor (sequence models).
  layer_norm: str = "both"  # true, false or both (sequence models).
  eval: bool = True
  peak_size: int = 0  # Matmul size for the peak; 0: 8192 on accelerators, 1024 on CPU.
  cudnn_reference: bool = True
  seed: int = 0
  output: str = ""  # A .json path, or a directory for auto-named files.
  header: bool = True


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model at one size: what is built, fed and timed.

  Attributes:
    model: the registry name.
    model_kwargs: the model's constructor arguments (besides dtype), as recorded.
    info: the synthetic dataset's shapes and task.
    seq_len: time steps per example (sequence models), else None.
    batch_size: global examples per step.
    optimizer: the trainer config's optimiser fields.
  """

  model: str
  model_kwargs: dict[str, Any]
  info: DatasetInfo
  seq_len: int | None
  batch_size: int
  optimizer: dict[str, Any]

  def config(self, dtype: str, seed: int) -> ml_collections.ConfigDict:
    """The trainer config that builds this workload's model, state and optimiser."""
    config = default.get_config()
    config.model = self.model
    config.model_kwargs = ml_collections.ConfigDict(self.model_kwargs)
    config.dtype = dtype
    config.batch_size = self.batch_size
    config.seed = seed
    config.warmup_epochs = 0.0
    config.update(self.optimizer)
    return config


def family(model: str) -> str:
  """'imagenet', 'cifar', or the sequence model's name; ValueError for other models."""
  if re.fullmatch(r"cifar_(resnet|plain)\d+", model):
    return "cifar"
  if re.fullmatch(r"(resnet|plain)\d+", model):
    return "imagenet"
  if model in SEQUENCE_MODELS:
    return model
  raise ValueError(f"--model={model!r}: no benchmark workload is defined for it "
                   f"(ResNets, plain nets, {' and '.join(SEQUENCE_MODELS)} are).")


def _info(name: str, task: str, num_classes: int, example_shape: tuple[int, ...]) -> DatasetInfo:
  # Sized like ImageNet: steps per epoch do not change the cost of a step.
  return DatasetInfo(name=name, task=task, num_classes=num_classes, example_shape=example_shape,
                     num_train=1_281_167, num_eval=50_000, train_split="train",
                     eval_split="validation")


def make_workload(model: str, options: Options, layer_norm: bool = True) -> Workload:
  """The workload of `model` at the sizes `options` asks for."""
  kind = family(model)
  if kind in ("imagenet", "cifar"):
    size = options.image_size or (224 if kind == "imagenet" else 32)
    classes = 1000 if kind == "imagenet" else 10
    batch_size = options.batch_size or (256 if kind == "imagenet" else 128)
    return Workload(model, {"num_classes": classes},
                    _info("synthetic_image", "classification", classes, (size, size, 3)),
                    None, batch_size, SGD)
  kwargs = {"features": options.features, "num_layers": options.num_layers,
            "layer_norm": layer_norm, "unroll": options.unroll}
  if kind == "char_lm":
    kwargs.update(vocab_size=VOCAB_SIZE, embed_dim=options.embed_dim)
    return Workload(model, kwargs,
                    _info("synthetic_text", "language_modeling", VOCAB_SIZE, (options.seq_len,)),
                    options.seq_len, options.batch_size or 32, ADAMW)
  # seq_classifier: `embed_dim` features per time step.
  kwargs["num_classes"] = SEQUENCE_CLASSES
  return Workload(model, kwargs,
                  _info("synthetic_sequences", "classification", SEQUENCE_CLASSES,
                        (options.seq_len, options.embed_dim)),
                  options.seq_len, options.batch_size or 32, ADAMW)
