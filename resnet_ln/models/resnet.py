"""ResNets of "Deep Residual Learning for Image Recognition" (He et al., 2015).

The ImageNet nets (ResNet-18 ... 152), the CIFAR nets of section 4.2 (depth
6n+2, 16/32/64 filters) and the plain nets (the same stacks without shortcuts).
Convolutions pad symmetrically, as torchvision does (never 'SAME', which pads
asymmetrically at stride 2), so torchvision weights load directly
(`resnet_ln.models.from_torchvision`).

    model = ResNet50(num_classes=1000)
    variables = model.init(rng, images, train=False)
    logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_ln.models.registry import register_model
from resnet_ln.models.registry import register_model_family

ModuleDef = Any
Dtype = Any

SHORTCUTS = ("A", "B", "C")
STEMS = ("imagenet", "cifar")
NORMS = ("batch", "layer", "group", None)


def _shortcut(block: nn.Module, x: jax.Array, filters: int) -> jax.Array:
  """The shortcut branch of `block` (paper section 3.3), `filters` channels out.

  Option 'A' subsamples and zero-pads channels (no parameters), 'B' projects
  with a 1x1 conv + norm only where the shape changes, 'C' projects everywhere.
  """
  changes_shape = block.strides != 1 or x.shape[-1] != filters
  if block.shortcut == "C" or (block.shortcut == "B" and changes_shape):
    x = block.conv(filters, (1, 1), block.strides, padding=0, name="proj_conv")(x)
    return block.norm(name="proj_norm")(x)
  x = x[:, :: block.strides, :: block.strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, filters - x.shape[-1])))


def _last_scale_init(block: nn.Module) -> Callable:
  """Zeros for the last norm of a residual branch, so the block starts as relu(shortcut)."""
  if block.residual and block.zero_init_residual:
    return nn.initializers.zeros_init()
  return nn.initializers.ones_init()


def _no_norm(**unused_kwargs) -> Callable[[jax.Array], jax.Array]:
  """The `norm` of a net without normalisation: the identity."""
  return lambda x: x


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34 and the CIFAR nets); `filters` channels out.

  Attributes:
    filters: output channels.
    conv: nn.Conv with everything but features, kernel, strides and padding set.
    norm: a norm module constructor (keyword arguments `name`, `scale_init`).
    act: the activation, e.g. nn.relu.
    strides: stride of the first conv (2 at the start of a downsampling stage).
    shortcut: 'A', 'B' or 'C' (see `_shortcut`).
    residual: False drops the shortcut (the paper's plain nets).
    zero_init_residual: start the last norm scale at zero (residual blocks only).
    stride_on_3x3: no effect here (both convs are 3x3; the first one strides);
      present so both block classes take the same fields.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  shortcut: str = "B"
  residual: bool = True
  zero_init_residual: bool = True
  stride_on_3x3: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, channels] -> [batch, height/strides, width/strides, filters]."""
    y = self.conv(self.filters, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = self.act(self.norm(name="norm1")(y))
    y = self.conv(self.filters, (3, 3), padding=1, name="conv2")(y)
    y = self.norm(scale_init=_last_scale_init(self), name="norm2")(y)
    if self.residual:
      y = y + _shortcut(self, x, self.filters)
    return self.act(y)


class BottleneckBlock(nn.Module):
  """1x1, 3x3, 1x1 convs (ResNet-50/101/152); `4 * filters` channels out.

  Attributes:
    filters: channels of the 1x1 and 3x3 convs; the block outputs 4x as many.
    conv: nn.Conv with everything but features, kernel, strides and padding set.
    norm: a norm module constructor (keyword arguments `name`, `scale_init`).
    act: the activation, e.g. nn.relu.
    strides: the block's stride (2 at the start of a downsampling stage).
    shortcut: 'A', 'B' or 'C' (see `_shortcut`).
    residual: False drops the shortcut (the paper's plain nets).
    zero_init_residual: start the last norm scale at zero (residual blocks only).
    stride_on_3x3: True strides the 3x3 conv (torchvision's "v1.5", about 0.5%
      better top-1); False strides the first 1x1 conv, as in the paper.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  shortcut: str = "B"
  residual: bool = True
  zero_init_residual: bool = True
  stride_on_3x3: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, channels] -> [batch, height/strides, width/strides,
    4 * filters]."""
    strides_1x1, strides_3x3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
    y = self.conv(self.filters, (1, 1), strides_1x1, padding=0, name="conv1")(x)
    y = self.act(self.norm(name="norm1")(y))
    y = self.conv(self.filters, (3, 3), strides_3x3, padding=1, name="conv2")(y)
    y = self.act(self.norm(name="norm2")(y))
    y = self.conv(4 * self.filters, (1, 1), padding=0, name="conv3")(y)
    y = self.norm(scale_init=_last_scale_init(self), name="norm3")(y)
    if self.residual:
      y = y + _shortcut(self, x, 4 * self.filters)
    return self.act(y)


class ResNet(nn.Module):
  """A ResNet v1 classifier of NHWC images.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50. Stage i has
      `num_filters * 2**i` filters; every stage after the first halves the
      resolution in its first block.
    block_cls: BasicBlock or BottleneckBlock.
    num_classes: number of logits.
    num_filters: filters of the stem and of the first stage.
    stem: 'imagenet' (7x7/2 conv and 3x3/2 max-pool, 224 -> 56 pixels) or
      'cifar' (one 3x3 conv, full resolution).
    shortcut: 'A' (zero-padded identity, no parameters), 'B' (1x1 projection
      where the shape changes; the paper's ImageNet nets and torchvision) or 'C'
      (projection in every block).
    residual: False gives the paper's plain nets: the same stacks, no shortcuts.
    stride_on_3x3: where a bottleneck block strides; True (torchvision "v1.5",
      which its weights need) or False (the paper: the first 1x1 conv).
    norm: 'batch' (the paper), 'layer' (over channels at each pixel), 'group'
      or None (no normalisation; the convs get biases).
    num_groups: groups of the 'group' norm; must divide every stage's channels.
    zero_init_residual: start each residual branch's last norm scale at zero so
      every block starts as relu(shortcut) (Goyal et al. 2017); set False for
      paper-faithful runs. Without a norm it has no effect.
    axis_name: the data-parallel axis (pmap or shard_map) over which BatchNorm
      averages its statistics (None: per-device statistics).
    dtype: computation dtype, e.g. jnp.bfloat16; logits are always float32.
    param_dtype: parameter storage dtype.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int = 1000
  num_filters: int = 64
  stem: str = "imagenet"
  shortcut: str = "B"
  residual: bool = True
  stride_on_3x3: bool = True
  norm: str | None = "batch"
  num_groups: int = 32
  zero_init_residual: bool = True
  axis_name: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self) -> None:
    # Checked when the model is built, not when it is first traced.
    for field, allowed in (("shortcut", SHORTCUTS), ("stem", STEMS), ("norm", NORMS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Classifies images.

    Args:
      x: images, [batch, height, width, channels].
      train: True uses and updates batch statistics (apply with
        `mutable=['batch_stats']`); False uses the running averages.

    Returns:
      float32 logits, [batch, num_classes].
    """
    conv = functools.partial(
        nn.Conv,
        use_bias=self.norm is None,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    norm = self._norm_def(train)

    if self.stem == "imagenet":
      x = conv(self.num_filters, (7, 7), 2, padding=3, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:  # 'cifar'
      x = conv(self.num_filters, (3, 3), padding=1, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))

    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block_cls(
            filters=self.num_filters * 2**i,
            conv=conv,
            norm=norm,
            act=nn.relu,
            strides=2 if i > 0 and j == 0 else 1,
            shortcut=self.shortcut,
            residual=self.residual,
            zero_init_residual=self.zero_init_residual,
            stride_on_3x3=self.stride_on_3x3,
            name=f"stage{i + 1}_block{j}",
        )(x)

    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    return jnp.asarray(x, jnp.float32)

  def _norm_def(self, train: bool) -> ModuleDef:
    """The norm constructor every layer shares, as chosen by `self.norm`."""
    common = dict(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.norm == "batch":
      return functools.partial(
          nn.BatchNorm, use_running_average=not train, momentum=0.9,
          axis_name=self.axis_name, **common)
    if self.norm == "layer":
      return functools.partial(nn.LayerNorm, **common)
    if self.norm == "group":
      return functools.partial(nn.GroupNorm, num_groups=self.num_groups, **common)
    return _no_norm  # norm=None


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)
Plain18 = functools.partial(ResNet18, residual=False)
Plain34 = functools.partial(ResNet34, residual=False)


def CifarResNet(
    depth: int, *, num_classes: int = 10, shortcut: str = "A", num_groups: int = 8, **kwargs
) -> ResNet:
  """The CIFAR-10 ResNet of the paper's section 4.2, for 32x32 images.

  A 3x3 stem conv with 16 filters, three stages of n basic blocks with 16, 32
  and 64 filters (the last two start at stride 2), global average pooling and
  a dense layer: 6n + 2 weighted layers.

  Args:
    depth: 6n + 2 for an integer n >= 1 (the paper: 20, 32, 44, 56, 110, 1202).
    num_classes: number of logits.
    shortcut: 'A' (the paper's CIFAR choice), 'B' or 'C'; see `ResNet`.
    num_groups: groups of norm='group' (must divide 16).
    **kwargs: other `ResNet` fields (residual, norm, dtype, ...).

  Raises:
    ValueError: `depth` is not 6n + 2.
  """
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(
        f"CIFAR ResNet depth must be 6n + 2 for an integer n >= 1 "
        f"(e.g. 20, 32, 44, 56, 110, 1202), got {depth}.")
  n = (depth - 2) // 6
  return ResNet(
      stage_sizes=(n, n, n), block_cls=BasicBlock, num_classes=num_classes, num_filters=16,
      stem="cifar", shortcut=shortcut, num_groups=num_groups, **kwargs)


CifarPlain = functools.partial(CifarResNet, residual=False)

register_model("resnet18")(ResNet18)
register_model("resnet34")(ResNet34)
register_model("resnet50")(ResNet50)
register_model("resnet101")(ResNet101)
register_model("resnet152")(ResNet152)
register_model("plain18")(Plain18)
register_model("plain34")(Plain34)
register_model_family("cifar_resnet", listed=(20, 32, 44, 56, 110, 1202))(CifarResNet)
register_model_family("cifar_plain", listed=(20, 32, 44, 56, 110))(CifarPlain)
