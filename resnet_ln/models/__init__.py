"""Flax Linen models: ResNets and LayerNorm LSTMs. Depends on jax and flax only."""

from resnet_ln.models.lstm import LSTM
from resnet_ln.models.lstm import LSTMCell
from resnet_ln.models.lstm import LayerNormLSTMCell
from resnet_ln.models.registry import get_model
from resnet_ln.models.registry import list_models
from resnet_ln.models.registry import register_model
from resnet_ln.models.registry import register_model_family
from resnet_ln.models.resnet import BasicBlock
from resnet_ln.models.resnet import BottleneckBlock
from resnet_ln.models.resnet import CifarPlain
from resnet_ln.models.resnet import CifarResNet
from resnet_ln.models.resnet import Plain18
from resnet_ln.models.resnet import Plain34
from resnet_ln.models.resnet import ResNet
from resnet_ln.models.resnet import ResNet18
from resnet_ln.models.resnet import ResNet34
from resnet_ln.models.resnet import ResNet50
from resnet_ln.models.resnet import ResNet101
from resnet_ln.models.resnet import ResNet152
from resnet_ln.models.resnet import ResNetBlock
from resnet_ln.models.sequence import CharLM
from resnet_ln.models.sequence import LSTMOptions
from resnet_ln.models.sequence import SequenceClassifier
from resnet_ln.models.torchvision import from_torchvision
