"""The main job: a CIFAR-style ResNet-20 on the embedded `digits` dataset, offline.

  python train.py --config=configs/default.py --workdir=workdirs/default

330 steps of 128 (30 epochs); about 30 seconds on 2 CPU cores, compilation
included, to a test accuracy of about 0.99 on the 355 held-out digits.

Every other config starts from this one and changes what its experiment varies.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model: any name from resnet_ln.models.list_models(); model_kwargs go to its constructor.
  config.model = "cifar_resnet20"
  config.model_kwargs = ml_collections.ConfigDict()
  config.dtype = "float32"  # Compute dtype: float32, bfloat16, or float16 (loss scaling).
  # Starting weights (fresh workdirs only; a rerun resumes from the run's own checkpoints):
  # a torchvision-layout ResNet state dict (.safetensors, .npz, .pth/.pt), or a resnet_ln
  # workdir or one of its checkpoint directories. None: random initialisation.
  config.init_from = config_dict.placeholder(str)
  # Regex over parameter paths ('head/kernel', '^stage4') kept at their fresh initialisation.
  # Parameters whose shape differs from the source's (the head) are kept fresh anyway.
  config.init_exclude = config_dict.placeholder(str)
  # Regex over parameter paths kept exactly fixed: '^stage[1-3]', or '^(?!head)' (linear probe).
  config.freeze = config_dict.placeholder(str)
  config.freeze_batch_stats = False  # True: BatchNorm statistics matched by freeze stay fixed.

  # Data: an embedded offline dataset (digits, pydoc_topics), synthetic data
  # (synthetic_image, synthetic_text), image_folder:PATH, text_files:PATH_OR_GLOB, or a TFDS name.
  config.dataset = "digits"
  config.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or TFDS's default.
  config.train_split = "train"  # A TFDS split spec ("train[:90%]"); image folders: a folder.
  # None: "validation" if present, else "test" (image folders: val, validation or test).
  config.eval_split = config_dict.placeholder(str)
  config.num_classes = 1000  # synthetic_image only; real datasets bring their own.
  config.shuffle_buffer = 0  # Images; 0: the whole split, at most 50,000 examples.
  # None: the dataset's own size (8 for digits; 224 for ImageNet and image folders).
  config.image_size = config_dict.placeholder(int)
  config.seq_len = 128  # Characters per sequence (language modelling).
  # True: the dataset's usual train augmentation (image folders: "cifar" up to 64 pixels, else
  # "imagenet"); False: none; "imagenet": random-resized crop and flip; "cifar": pad-and-crop
  # and flip. The eval crop follows the recipe.
  config.augment = config_dict.FieldReference(True, field_type=object)
  config.skip_bad_images = False  # Image folders: leave out (and count) files that are not images.
  config.eval_fraction = 0.1  # Text files: the last part of each file that is held out for eval.
  config.batch_size = 128  # Global, over all devices and hosts.
  config.eval_batch_size = 256

  # Optimisation.
  config.optimizer = "sgd"  # sgd (momentum) or adamw.
  config.learning_rate = 0.1
  config.lr_base_batch_size = 0  # > 0: learning_rate is per this many examples, scaled linearly.
  config.momentum = 0.9  # sgd.
  config.nesterov = True  # sgd.
  config.adam_b1 = 0.9  # adamw.
  config.adam_b2 = 0.999  # adamw.
  config.weight_decay = 5e-4  # On kernels only, unless weight_decay_all.
  config.weight_decay_all = False
  config.grad_clip_norm = 0.0  # 0: no clipping.
  config.label_smoothing = 0.0
  config.schedule = "cosine"  # constant, piecewise, step or cosine.
  config.warmup_steps = 0
  config.warmup_epochs = 1.0  # Overrides warmup_steps when > 0.
  config.lr_boundaries = ()  # Steps (piecewise, step).
  config.lr_boundaries_epochs = ()  # Epochs; overrides lr_boundaries when set.
  config.lr_factors = ()  # piecewise: the rate is multiplied by lr_factors[k] at boundary k.
  config.lr_decay_factor = 0.1  # step: the rate is multiplied by this at each boundary.
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  config.num_epochs = 30.0

  # Parallelism: pmap or shard_map over all devices (num_devices > 0: the first N, one host).
  config.parallelism = "pmap"
  config.num_devices = 0
  config.seed = 0
  config.skip_nonfinite = False  # True: skip (and count) non-finite updates instead of stopping.

  # Logging and checkpoints.
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: only at the end.
  config.checkpoint_every_steps = 200
  config.max_to_keep = 3
  # JAX's persistent compilation cache, so that a rerun or a resume does not compile
  # again. None: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/resnet_ln/jax; "": off.
  config.compilation_cache_dir = config_dict.placeholder(str)
  config.profile_steps = ""  # "100:110": a jax.profiler trace of steps 101-110 in DIR/profile/.
  return config
