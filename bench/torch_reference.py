"""The PyTorch side of `bench.compare`: the same models, optimisers and steps, in PyTorch.

- ResNet-18/34/50/101/152 in torchvision's layout (stride on the bottleneck's 3x3,
  "v1.5"), from torchvision when it imports, else the equivalent definitions here
  (same parameters: 11,689,512 for ResNet-18, 25,557,032 for ResNet-50).
- The CIFAR ResNets (three stages of 16/32/64 filters, option-A shortcut), which
  torchvision does not have.
- The char LM (embedding, LSTM stack, projection) on `nn.LSTM` (cuDNN's LSTM on
  a GPU), or on a TorchScript-scripted LayerNorm LSTM: PyTorch has none, so this
  is the paper's cell written as a user would write it (LN over the 4H gate
  vector of W_x x and of W_h h separately, LN(c) before tanh; the input
  projection and its LN for all time steps in one matmul, as resnet_ln does).

Imported only by `bench.compare`, and only where torch is installed: torch is an
optional benchmark dependency, not a requirement of the package.
"""

import math
import re
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F

try:
  import torchvision  # pylint: disable=g-import-not-at-top
except Exception:  # pylint: disable=broad-except
  # Any failure (absent, or built for another torch) falls back to the definitions below.
  torchvision = None

IMAGENET_STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                   50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                   152: ("bottleneck", (3, 8, 36, 3))}


# ----------------------------------------------------------------------------
# ResNets.
# ----------------------------------------------------------------------------
class BasicBlock(nn.Module):
  """Two 3x3 convolutions; a 1x1 projection shortcut when the shape changes (torchvision's)."""

  expansion = 1

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = _projection(in_planes, planes * self.expansion, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
  """1x1, strided 3x3, 1x1 (x4 filters); a 1x1 projection shortcut when the shape changes."""

  expansion = 4

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = _projection(in_planes, planes * self.expansion, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
  if stride == 1 and in_planes == out_planes:
    return None
  return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                       nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
  """torchvision's ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, average pool, fc."""

  def __init__(self, block: type, stage_sizes: tuple[int, ...], num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    layers, in_planes = [], 64
    for i, blocks in enumerate(stage_sizes):
      planes = 64 * 2**i
      stage = []
      for j in range(blocks):
        stage.append(block(in_planes, planes, 2 if i > 0 and j == 0 else 1))
        in_planes = planes * block.expansion
      layers.append(nn.Sequential(*stage))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.fc = nn.Linear(in_planes, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CifarBlock(nn.Module):
  """The CIFAR nets' basic block; option-A shortcut: subsample, zero-pad the new channels."""

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.stride, self.pad = stride, planes - in_planes

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
    if self.pad:
      shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return F.relu(y + shortcut)


class CifarResNet(nn.Module):
  """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem of 16, three stages of n blocks (16/32/64)."""

  def __init__(self, depth: int, num_classes: int = 10):
    super().__init__()
    if (depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    blocks, in_planes = [], 16
    for i, planes in enumerate((16, 32, 64)):
      for j in range(n):
        blocks.append(CifarBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1))
        in_planes = planes
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(F.relu(self.bn1(self.conv1(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet(model: str, num_classes: int) -> nn.Module:
  """The PyTorch network of a resnet_ln registry name ('resnet50', 'cifar_resnet20', ...)."""
  match = re.fullmatch(r"(cifar_)?resnet(\d+)", model)
  if not match:
    raise ValueError(f"No PyTorch reference for model {model!r} (ResNets only).")
  depth = int(match.group(2))
  if match.group(1):
    return CifarResNet(depth, num_classes)
  if depth not in IMAGENET_STAGES:
    raise ValueError(f"No ImageNet ResNet of depth {depth}; depths: {sorted(IMAGENET_STAGES)}.")
  if torchvision is not None:
    return getattr(torchvision.models, model)(num_classes=num_classes)
  kind, stages = IMAGENET_STAGES[depth]
  return ResNet(BasicBlock if kind == "basic" else Bottleneck, stages, num_classes)


# ----------------------------------------------------------------------------
# Character language models.
# ----------------------------------------------------------------------------
class LayerNormLSTMLayer(nn.Module):
  """One LayerNorm-LSTM layer over [batch, time, input] (Ba et al. 2016), gates [f, i, o, g].

  [f, i, o, g] = LN(W_h h) + LN(W_x x) + b; c = sig(f) c + sig(i) tanh(g);
  h = sig(o) tanh(LN(c)). The carried cell is the raw c.
  """

  def __init__(self, input_size: int, hidden_size: int, epsilon: float = 1e-5):
    super().__init__()
    self.hidden_size = hidden_size
    self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
    self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
    bias = torch.zeros(4 * hidden_size)
    bias[:hidden_size] = 1.0  # Forget gate.
    self.bias = nn.Parameter(bias)
    self.ln_ih = nn.LayerNorm(4 * hidden_size, eps=epsilon)
    self.ln_hh = nn.LayerNorm(4 * hidden_size, eps=epsilon)
    self.ln_c = nn.LayerNorm(hidden_size, eps=epsilon)
    bound = 1 / math.sqrt(hidden_size)
    nn.init.uniform_(self.weight_ih, -bound, bound)
    nn.init.uniform_(self.weight_hh, -bound, bound)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    batch = x.shape[0]
    # LN(W_x x) depends on x alone: all time steps in one matmul before the recurrence.
    input_gates = (self.ln_ih(x @ self.weight_ih.t()) + self.bias).unbind(1)
    h = x.new_zeros(batch, self.hidden_size)
    c = x.new_zeros(batch, self.hidden_size)
    outputs = []
    for gates_x in input_gates:
      gates = gates_x + self.ln_hh(h @ self.weight_hh.t())
      f, i, o, g = gates.chunk(4, 1)
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
      h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
      outputs.append(h)
    return torch.stack(outputs, 1)


class CharLM(nn.Module):
  """resnet_ln's `char_lm` in PyTorch: embedding, LSTM stack, per-step logits [batch, time, vocab]."""

  def __init__(self, vocab_size: int, embed_dim: int, features: int, num_layers: int,
               layer_norm: bool, script: bool = True):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, embed_dim)
    self.layer_norm = layer_norm
    if layer_norm:
      layers = [LayerNormLSTMLayer(embed_dim if i == 0 else features, features)
                for i in range(num_layers)]
      self.lstm = nn.Sequential(*[torch.jit.script(l) if script else l for l in layers])
    else:
      self.lstm = nn.LSTM(embed_dim, features, num_layers, batch_first=True)
    self.proj = nn.Linear(features, vocab_size)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    x = self.embed(tokens)
    x = self.lstm(x) if self.layer_norm else self.lstm(x)[0]
    return self.proj(x)


def char_lm(model_kwargs: dict[str, Any], script: bool = True) -> nn.Module:
  """The PyTorch char LM of a resnet_ln `char_lm` workload's model kwargs."""
  return CharLM(model_kwargs["vocab_size"], model_kwargs["embed_dim"], model_kwargs["features"],
                model_kwargs["num_layers"], model_kwargs["layer_norm"], script)


# ----------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------
def optimizer(params, fields: dict[str, Any]) -> torch.optim.Optimizer:
  """The optimiser of a resnet_ln config's optimiser fields (SGD momentum or AdamW).

  Weight decay applies to every parameter here (resnet_ln masks norms and biases):
  the same cost per step, which is what is compared.
  """
  if fields["optimizer"] == "sgd":
    return torch.optim.SGD(params, lr=fields["learning_rate"], momentum=fields["momentum"],
                           nesterov=fields["nesterov"], weight_decay=fields["weight_decay"])
  if fields["optimizer"] == "adamw":
    return torch.optim.AdamW(params, lr=fields["learning_rate"],
                             weight_decay=fields["weight_decay"])
  raise ValueError(f"No PyTorch optimiser for optimizer={fields['optimizer']!r}.")


def make_steps(model: nn.Module, opt: torch.optim.Optimizer, grad_clip_norm: float,
               autocast_dtype: torch.dtype | None, device: torch.device
               ) -> tuple[Callable, Callable]:
  """(train_step, eval_step) of (inputs, labels): cross-entropy over every position's logits.

  train_step updates `model` in place and returns the loss; eval_step returns
  (summed loss, correct predictions), as resnet_ln's eval_step returns sums.
  """
  params = [p for p in model.parameters() if p.requires_grad]

  def autocast():
    return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

  def logits_of(inputs):
    logits = model(inputs).float()  # The loss in float32 whatever the compute dtype.
    return logits.reshape(-1, logits.shape[-1])

  def train_step(inputs, labels):
    model.train()
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = F.cross_entropy(logits_of(inputs), labels.reshape(-1))
    loss.backward()
    if grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
    opt.step()
    return loss

  def eval_step(inputs, labels):
    model.eval()
    with torch.inference_mode(), autocast():
      logits = logits_of(inputs)
      labels = labels.reshape(-1)
      return (F.cross_entropy(logits, labels, reduction="sum"),
              (logits.argmax(-1) == labels).sum())

  return train_step, eval_step
