"""Flax Linen models: ResNets and LayerNorm LSTMs. Depends on jax and flax only."""

from resnet_ln.models.lstm import LSTM
from resnet_ln.models.lstm import LSTMCell
from resnet_ln.models.lstm import LayerNormLSTMCell
from resnet_ln.models.registry import get_model
from resnet_ln.models.registry import list_models
from resnet_ln.models.registry import register_model
from resnet_ln.models.registry import register_model_family
from resnet_ln.models.sequence import CharLM
from resnet_ln.models.sequence import SequenceClassifier
