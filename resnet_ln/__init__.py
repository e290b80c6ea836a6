"""resnet_ln: ResNets and LayerNorm LSTMs in JAX/Flax, with a multi-device trainer."""

__version__ = "0.1.0"
