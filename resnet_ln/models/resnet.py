"""ResNets of "Deep Residual Learning for Image Recognition" (He et al., 2015).

The ImageNet nets (ResNet-18 ... 152), the CIFAR nets of section 4.2 (depth
6n+2, 16/32/64 filters) and the plain nets (the same stacks without shortcuts).
Convolutions pad symmetrically, as torchvision does (never 'SAME', which pads
asymmetrically at stride 2), so torchvision weights load directly
(`resnet_ln.models.from_torchvision`).

    model = ResNet50(num_classes=1000)
    variables = model.init(rng, images, train=False)
    logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
    maps = model.apply(variables, images, method="features")  # {'stem', 'stage1'..'stage4'}
"""

import functools
import inspect
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_ln.models.convolution import conv_general_dilated
from resnet_ln.models.convolution import subsample
from resnet_ln.models.pooling import max_pool
from resnet_ln.models.registry import register_model
from resnet_ln.models.registry import register_model_family

ModuleDef = Any
Dtype = Any

SHORTCUTS = ("A", "B", "C")
STEMS = ("imagenet", "cifar")
NORMS = ("batch", "layer", "group", None)


def _no_norm(**unused_kwargs) -> Callable[[jax.Array], jax.Array]:
  """The `norm` of a net without normalisation: the identity."""
  return lambda x: x


class ResNetBlock(nn.Module):
  """What every residual block of a `ResNet` takes; subclasses add `__call__`.

  Attributes:
    filters: the block's base width (see the subclass for its output channels).
    conv: nn.Conv with everything but features, kernel, strides and padding set.
    norm: a norm module constructor (keyword arguments `name`, `scale_init`).
    act: the activation, e.g. nn.relu.
    strides: the block's stride (2 at the start of a downsampling stage).
    shortcut: 'A' (subsample and zero-pad channels, no parameters), 'B'
      (project with a 1x1 conv + norm only where the shape changes) or 'C'
      (project everywhere); the paper's section 3.3.
    residual: False drops the shortcut (the paper's plain nets).
    zero_init_residual: start the last norm scale at zero (residual blocks only).
    drop_path: None, or a constructor of the module that drops the residual
      branch of whole examples (stochastic depth), e.g. `functools.partial(
      nn.Dropout, rate, broadcast_dims=(1, 2, 3), deterministic=not train)`.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  shortcut: str = "B"
  residual: bool = True
  zero_init_residual: bool = True
  drop_path: ModuleDef | None = None

  @nn.nowrap
  def _last_scale_init(self) -> Callable:
    """Zeros for the last norm of the branch, so the block starts as act(shortcut)."""
    if self.residual and self.zero_init_residual:
      return nn.initializers.zeros_init()
    return nn.initializers.ones_init()

  @nn.nowrap
  def _merge(self, branch: jax.Array, x: jax.Array) -> jax.Array:
    """act(branch + shortcut(x)), or act(branch) in a plain net."""
    if not self.residual:
      return self.act(branch)
    if self.drop_path is not None:
      branch = self.drop_path(name="drop_path")(branch)
    filters = branch.shape[-1]
    changes_shape = self.strides != 1 or x.shape[-1] != filters
    if self.shortcut == "C" or (self.shortcut == "B" and changes_shape):
      x = self.conv(filters, (1, 1), self.strides, padding=0, name="proj_conv")(x)
      x = self.norm(name="proj_norm")(x)
    else:
      x = subsample(x, (self.strides, self.strides))
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, filters - x.shape[-1])))
    return self.act(branch + x)


class BasicBlock(ResNetBlock):
  """Two 3x3 convs (ResNet-18/34 and the CIFAR nets); `filters` channels out.

  The first conv strides. Attributes: see `ResNetBlock`.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, channels] -> [batch, height/strides, width/strides, filters]."""
    y = self.conv(self.filters, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = self.act(self.norm(name="norm1")(y))
    y = self.conv(self.filters, (3, 3), padding=1, name="conv2")(y)
    y = self.norm(scale_init=self._last_scale_init(), name="norm2")(y)
    return self._merge(y, x)


class BottleneckBlock(ResNetBlock):
  """1x1, 3x3, 1x1 convs (ResNet-50/101/152); `4 * filters` channels out.

  Attributes:
    filters: channels of the 1x1 and 3x3 convs; the block outputs 4x as many.
    stride_on_3x3: True strides the 3x3 conv (torchvision's "v1.5", about 0.5%
      better top-1); False strides the first 1x1 conv, as in the paper.
    The others: see `ResNetBlock`.
  """

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
    y = self.norm(scale_init=self._last_scale_init(), name="norm3")(y)
    return self._merge(y, x)


def _looks_like_channels(dim: Any) -> bool:
  """Whether `dim` is a concrete 1, 3 or 4 (a symbolic `jax.export` size never is)."""
  return isinstance(dim, int) and dim in (1, 3, 4)


def _check_images(x: jax.Array) -> None:
  """Refuses what is not an NHWC batch, in the caller's terms."""
  expected = "expected NHWC images [batch, height, width, channels]"
  if x.ndim == 3:
    raise ValueError(f"{expected}, got shape {tuple(x.shape)}: add a batch axis (images[None]).")
  if x.ndim != 4:
    raise ValueError(f"{expected}, got shape {tuple(x.shape)}.")
  channels_last = x.shape[3]
  if (_looks_like_channels(x.shape[1]) and isinstance(channels_last, int)
      and not _looks_like_channels(channels_last)):
    raise ValueError(
        f"{expected}, got shape {tuple(x.shape)} (NCHW?); "
        "convert with images.transpose(0, 2, 3, 1).")


def _accepts(factory: Callable, argument: str) -> bool:
  """Whether `factory` (a block class, or a partial of one) takes `argument`."""
  return argument in inspect.signature(factory).parameters


class ResNet(nn.Module):
  """A ResNet v1 classifier (or backbone) of NHWC images.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50. Stage i has
      `num_filters * 2**i` filters; every stage after the first halves the
      resolution in its first block.
    block_cls: BasicBlock, BottleneckBlock, or another `ResNetBlock`; it gets
      `stride_on_3x3` only if it takes it.
    num_classes: number of logits; None builds no head, and the net returns
      the pooled features [batch, channels] (a backbone; see also `features`).
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
    drop_path_rate: stochastic depth (Huang et al. 2016): in training, each
      example skips a block's residual branch with a probability growing
      linearly over the blocks, from 0 at the first to `drop_path_rate` at the
      last (timm's schedule), and kept branches are scaled by 1 / (1 - p). It
      draws from the 'dropout' rng and adds no parameters; 0 (the default)
      turns it off and needs no rng. Residual nets only.
    conv_general_dilated: the convolution every conv runs, with the signature of
      `jax.lax.conv_general_dilated`; the default runs 1x1 convs as matmuls on CPU
      (`resnet_ln.models.convolution`), `jax.lax.conv_general_dilated` leaves
      every conv to XLA.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int | None = 1000
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
  drop_path_rate: float = 0.0
  conv_general_dilated: Callable[..., jax.Array] = conv_general_dilated

  def __post_init__(self) -> None:
    # Checked when the model is built, not when it is first traced.
    for field, allowed in (("shortcut", SHORTCUTS), ("stem", STEMS), ("norm", NORMS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}.")
    if self.num_classes is not None and self.num_classes < 1:
      raise ValueError(
          f"num_classes must be >= 1 (or None for features only), got {self.num_classes}.")
    if not self.stage_sizes or min(self.stage_sizes) < 1:
      raise ValueError(
          f"stage_sizes must be one or more stages of >= 1 blocks, got {self.stage_sizes}.")
    if self.num_filters < 1:
      raise ValueError(f"num_filters must be >= 1, got {self.num_filters}.")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
    if self.drop_path_rate > 0 and not self.residual:
      raise ValueError("drop_path_rate needs residual blocks; a plain net has no shortcut.")
    super().__post_init__()

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Classifies images.

    Args:
      x: images, [batch, height, width, channels] (NHWC).
      train: True uses and updates batch statistics (apply with
        `mutable=['batch_stats']`) and drops paths if `drop_path_rate` > 0;
        False uses the running averages.

    Returns:
      float32 logits [batch, num_classes], or with `num_classes=None` the
      float32 pooled features [batch, channels] that a head would see.

    Raises:
      ValueError: `x` is not a batch of NHWC images.
    """
    _, outputs = self._forward(x, train, with_head=True)
    return outputs

  def features(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """The stem's and every stage's output, for detection or segmentation heads.

        features = model.apply(variables, images, train=False, method="features")

    It uses the classifier's parameters (the head's are left unused), so a
    classifier's variables (e.g. `from_torchvision`) serve a backbone unchanged.

    Args:
      x: images, [batch, height, width, channels] (NHWC).
      train: as in `__call__`.

    Returns:
      {'stem': ..., 'stage1': ..., 'stageN': ...}, each [batch, height / s,
      width / s, channels] in `dtype`. The ImageNet stem (after its max-pool)
      and stage 1 are at stride s = 4, stages 2, 3, 4 at 8, 16, 32; the CIFAR
      stem and stage 1 at 1, stages 2, 3 at 2, 4.
    """
    features, _ = self._forward(x, train, with_head=False)
    return features

  @nn.compact
  def _forward(
      self, x: jax.Array, train: bool, with_head: bool
  ) -> tuple[dict[str, jax.Array], jax.Array | None]:
    """(features by name, the output of `__call__` or None if not `with_head`)."""
    _check_images(x)
    conv = functools.partial(
        nn.Conv,
        use_bias=self.norm is None,
        conv_general_dilated=self.conv_general_dilated,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    norm = self._norm_def(train)

    if self.stem == "imagenet":
      x = conv(self.num_filters, (7, 7), 2, padding=3, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))
      x = max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:  # 'cifar'
      x = conv(self.num_filters, (3, 3), padding=1, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_norm")(x))
    features = {"stem": x}

    block_options = {}
    if _accepts(self.block_cls, "stride_on_3x3"):
      block_options["stride_on_3x3"] = self.stride_on_3x3
    num_blocks_total, block_index = sum(self.stage_sizes), 0
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        if self.drop_path_rate > 0:
          rate = self.drop_path_rate * block_index / max(num_blocks_total - 1, 1)
          block_options["drop_path"] = functools.partial(
              nn.Dropout, rate, broadcast_dims=(1, 2, 3), deterministic=not train)
        x = self.block_cls(
            filters=self.num_filters * 2**i,
            conv=conv,
            norm=norm,
            act=nn.relu,
            strides=2 if i > 0 and j == 0 else 1,
            shortcut=self.shortcut,
            residual=self.residual,
            zero_init_residual=self.zero_init_residual,
            name=f"stage{i + 1}_block{j}",
            **block_options,
        )(x)
        block_index += 1
      features[f"stage{i + 1}"] = x

    if not with_head:
      return features, None
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="head")(x)
    return features, jnp.asarray(x, jnp.float32)

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


# The paper's Table 1 nets; keyword arguments are the other `ResNet` fields.


@register_model("resnet18")
def ResNet18(**kwargs: Any) -> ResNet:
  """ResNet-18: basic blocks (2, 2, 2, 2), 11.7M parameters at 1000 classes.

  Args:
    **kwargs: the other `ResNet` fields (num_classes=1000, norm, dtype,
      num_classes=None for a backbone, ...); see `help(ResNet)`.
  """
  return ResNet(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, **kwargs)


@register_model("resnet34")
def ResNet34(**kwargs: Any) -> ResNet:
  """ResNet-34: basic blocks (3, 4, 6, 3), 21.8M parameters at 1000 classes.

  Args:
    **kwargs: the other `ResNet` fields; see `ResNet18` and `help(ResNet)`.
  """
  return ResNet(stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock, **kwargs)


@register_model("resnet50")
def ResNet50(**kwargs: Any) -> ResNet:
  """ResNet-50: bottleneck blocks (3, 4, 6, 3), 25.6M parameters at 1000 classes.

  Args:
    **kwargs: the other `ResNet` fields (stride_on_3x3=True is torchvision's
      "v1.5", False the paper's); see `ResNet18` and `help(ResNet)`.
  """
  return ResNet(stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, **kwargs)


@register_model("resnet101")
def ResNet101(**kwargs: Any) -> ResNet:
  """ResNet-101: bottleneck blocks (3, 4, 23, 3), 44.5M parameters at 1000 classes.

  Args:
    **kwargs: the other `ResNet` fields; see `ResNet50` and `help(ResNet)`.
  """
  return ResNet(stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock, **kwargs)


@register_model("resnet152")
def ResNet152(**kwargs: Any) -> ResNet:
  """ResNet-152: bottleneck blocks (3, 8, 36, 3), 60.2M parameters at 1000 classes.

  Args:
    **kwargs: the other `ResNet` fields; see `ResNet50` and `help(ResNet)`.
  """
  return ResNet(stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock, **kwargs)


@register_model("plain18")
def Plain18(**kwargs: Any) -> ResNet:
  """The paper's plain 18-layer net: ResNet-18's stack without shortcuts.

  Args:
    **kwargs: the other `ResNet` fields; see `help(ResNet)`.
  """
  return ResNet18(residual=False, **kwargs)


@register_model("plain34")
def Plain34(**kwargs: Any) -> ResNet:
  """The paper's plain 34-layer net: ResNet-34's stack without shortcuts.

  Args:
    **kwargs: the other `ResNet` fields; see `help(ResNet)`.
  """
  return ResNet34(residual=False, **kwargs)


@register_model_family("cifar_resnet", listed=(20, 32, 44, 56, 110, 1202))
def CifarResNet(
    depth: int, *, num_classes: int | None = 10, shortcut: str = "A", num_groups: int = 8,
    **kwargs: Any
) -> ResNet:
  """The CIFAR-10 ResNet of the paper's section 4.2, for 32x32 images.

  A 3x3 stem conv with 16 filters, three stages of n basic blocks with 16, 32
  and 64 filters (the last two start at stride 2), global average pooling and
  a dense layer: 6n + 2 weighted layers.

  Args:
    depth: 6n + 2 for an integer n >= 1 (the paper: 20, 32, 44, 56, 110, 1202).
    num_classes: number of logits (None: pooled features, no head).
    shortcut: 'A' (the paper's CIFAR choice), 'B' or 'C'; see `ResNet`.
    num_groups: groups of norm='group' (must divide 16).
    **kwargs: other `ResNet` fields (residual, norm, dtype, drop_path_rate, ...).

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


@register_model_family("cifar_plain", listed=(20, 32, 44, 56, 110))
def CifarPlain(depth: int, **kwargs: Any) -> ResNet:
  """The paper's plain CIFAR net of depth 6n + 2: `CifarResNet` without shortcuts.

  Args:
    depth: 6n + 2 for an integer n >= 1 (the paper: 20, 32, 44, 56, 110).
    **kwargs: as for `CifarResNet`.
  """
  return CifarResNet(depth, residual=False, **kwargs)
