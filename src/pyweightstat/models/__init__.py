"""Model families (DNN, CNN, ViT), a registry and weight initialisers."""

from .cnn import CNN
from .dnn import DNN
from .init import INIT_SCHEMES, init_weights
from .registry import FAMILIES, build_model, count_parameters, family_options
from .vit import ViT

__all__ = [
    "CNN",
    "DNN",
    "FAMILIES",
    "INIT_SCHEMES",
    "ViT",
    "build_model",
    "count_parameters",
    "family_options",
    "init_weights",
]
