"""Image preprocessing on the host, in tf.data: decode, crop, flip and resize per example,
normalise per batch.

Per-example functions take the still-encoded image and return uint8 pixels;
`normalize` casts the whole batch to float32 afterwards. Keeping uint8 until
after batching makes the buffers between the map and the batch a quarter of the
size, and one vectorised cast-and-scale per batch costs far less than one per
example. Every random choice is a stateless tf.random op whose seed comes from
the caller (the example's position in the stream), so a resumed run augments
each example exactly as an uninterrupted one would.
"""

from collections.abc import Sequence

from resnet_ln.data.cpu_tensorflow import tf
from resnet_ln.models import IMAGENET_MEAN, IMAGENET_STD

# Mean and standard deviation per channel, in [0, 1] pixel units.
NORMALIZATION = {
    "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),  # What torchvision's weights expect.
    # The std over all pixels. The often-copied (0.2023, 0.1994, 0.2010) is the
    # mean of the per-image stds, about 20% too small.
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    # Computed once over the 1,442 train images as stored (min(16 * count, 255)).
    "digits": ((0.3060,), (0.3770,)),
}
# Image folders hold photos of unknown statistics: ImageNet's are the usual guess.
NORMALIZATION["image_folder"] = NORMALIZATION["imagenet2012"]
# Any other dataset: [0, 1] -> [-1, 1].
DEFAULT_NORMALIZATION = ((0.5,), (0.5,))
# config.augment may name a recipe; True picks the dataset's own, False none.
AUGMENTATIONS = ("imagenet", "cifar")
# Image folders with images up to this size get the CIFAR recipe by default.
_SMALL_IMAGE_SIZE = 64

# ImageNet eval crops the central 224/256 of the shorter side: the same window as
# resizing the shorter side to 256/224 * image_size and cropping image_size.
_CENTRAL_FRACTION = 224 / 256


def family(name: str) -> str:
  """Which recipe a TFDS image dataset gets: 'imagenet', 'cifar' or 'small'."""
  base = name.split(":")[0].split("/")[0]
  if base.startswith("imagenet2012"):
    return "imagenet"
  if base in ("cifar10", "cifar100"):
    return "cifar"
  return "small"


def recipe(name: str, augment: bool | str, image_size: int) -> str:
  """The recipe for dataset `name` at image_size that config.augment asks for.

  Args:
    name: the config's dataset name.
    augment: config.augment. 'imagenet' or 'cifar': that recipe; True or False
      (augmentation or none): the dataset's own, `family(name)`, or for an image
      folder 'cifar' up to 64 pixels and 'imagenet' above.
    image_size: the model's input height and width.

  Returns:
    'imagenet', 'cifar' or 'small' (the CIFAR one without flips).

  Raises:
    ValueError: any other config.augment.
  """
  if augment in AUGMENTATIONS:
    return augment
  if not isinstance(augment, bool):
    raise ValueError(
        f"config.augment={augment!r} is invalid (--config.augment={augment}): expected True "
        "(the dataset's usual augmentation), False (none), 'imagenet' (random-resized crop "
        "and flip) or 'cifar' (pad-and-crop and flip).")
  if name.startswith("image_folder:"):
    return "cifar" if image_size <= _SMALL_IMAGE_SIZE else "imagenet"
  return family(name)


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel for dataset `name`, in [0, 1] pixel units."""
  base = name.split(":")[0].split("/")[0]
  return NORMALIZATION.get("imagenet2012" if family(base) == "imagenet" else base,
                           DEFAULT_NORMALIZATION)


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """uint8 [..., height, width, channels] -> float32 (x / 255 - mean) / std per channel."""
  scale = tf.constant([1 / (255 * s) for s in std], tf.float32)
  offset = tf.constant([m / s for m, s in zip(mean, std)], tf.float32)
  return tf.cast(images, tf.float32) * scale - offset


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.saturate_cast(tf.round(image), tf.uint8)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  # Antialiased bilinear: no aliasing when shrinking, and unlike bicubic it never
  # overshoots [0, 255] (an overshoot wraps around in a plain uint8 cast).
  return _to_uint8(tf.image.resize(image, [size, size], "bilinear", antialias=True))


def imagenet_train(image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """Inception-style crop (8%-100% of the area, aspect 3/4-4/3), resize, random flip.

  Only the crop window of a JPEG is decoded, which is most of the speed-up over
  decode-then-crop; PNG, BMP and GIF images are decoded whole, then cropped.

  Args:
    image_bytes: a scalar string, one encoded image.
    seed: [2] int64, this example's stateless seed.
    image_size: output height and width.

  Returns:
    uint8 [image_size, image_size, 3].
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def random_window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    # After 10 failed attempts the sampler returns the whole image; like the
    # reference Inception preprocessing, use the eval centre crop then.
    failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    return tf.where(failed, _central_window(shape),
                    tf.stack([begin[0], begin[1], size[0], size[1]]))

  image = _decode_window(image_bytes, random_window)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return _resize(image, image_size)


def _decode_window(image_bytes: tf.Tensor, window_of) -> tf.Tensor:
  """The window_of(shape) = [y, x, height, width] of an encoded image, as uint8 RGB.

  JPEGs decode only the window; other formats decode whole, then crop.
  """
  def jpeg():
    window = window_of(tf.image.extract_jpeg_shape(image_bytes))
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    y, x, height, width = tf.unstack(window_of(tf.shape(image)))
    return image[y:y + height, x:x + width]

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def _central_window(shape: tf.Tensor) -> tf.Tensor:
  """[y, x, height, width] of the central square, 224/256 of the shorter side."""
  side = tf.cast(_CENTRAL_FRACTION * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32),
                 tf.int32)
  return tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])


def imagenet_eval(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """Central crop (224/256 of the shorter side), resized: uint8 [image_size, image_size, 3]."""
  return _resize(_decode_window(image_bytes, _central_window), image_size)


def pad_and_crop(image: tf.Tensor, seed: tf.Tensor, padding: int, flip: bool) -> tf.Tensor:
  """Zero-pad by `padding` pixels, take a random crop of the original size, maybe flip.

  The ResNet paper's CIFAR augmentation is padding=4 with flips; digits get a
  smaller shift and no flip (a mirrored digit is another symbol).

  Args:
    image: uint8 [height, width, channels].
    seed: [2] int64, this example's stateless seed.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def preprocess_image(name: str, image_bytes: tf.Tensor, seed: tf.Tensor | None, *,
                     image_shape: tuple, image_size: int | None, augment: bool,
                     recipe: str | None = None) -> tf.Tensor:
  """One encoded image -> uint8 pixels, with the ImageNet, CIFAR or small-image recipe.

  ImageNet: `imagenet_train` / `imagenet_eval`. Others: decode, resize to
  image_size if that differs from the native size (e.g. digits 8x8 -> 32x32),
  then for training shift by up to 1/8 of the side (4 pixels at 32) through
  `pad_and_crop`, with flips for CIFAR only.

  Args:
    name: the TFDS name: picks the recipe when `recipe` is None.
    image_bytes: a scalar string, the encoded image.
    seed: [2] int64 stateless seed; None when not augmenting.
    image_shape: the dataset's (height, width, channels); height and width may
      be None (then image_size is needed).
    image_size: output height and width; None keeps the native size.
    augment: apply the train augmentation (needs `seed`).
    recipe: 'imagenet', 'cifar' or 'small' (see `recipe`); None: family(name).

  Returns:
    uint8 [image_size, image_size, channels], or image_shape when image_size is None.
  """
  recipe = recipe or family(name)
  height, width, channels = image_shape
  if recipe == "imagenet":
    if augment:
      return imagenet_train(image_bytes, seed, image_size or height)
    return imagenet_eval(image_bytes, image_size or height)
  image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
  if image_size is not None and (height, width) != (image_size, image_size):
    image = _resize(image, image_size)
    height = width = image_size
  image = tf.ensure_shape(image, [height, width, channels])
  if augment:
    image = pad_and_crop(image, seed, max(1, height // 8), flip=recipe == "cifar")
  return image
