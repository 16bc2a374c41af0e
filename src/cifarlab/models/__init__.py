"""Models: the registry (registry.py) and the architectures, each registered beside its code.

Importing this package registers every cifarlab model, in the order `cifarlab models` lists them.
"""

from cifarlab.models import (basic_cnn, deeper_cnn, resnet, resnet_cifar, preact_resnet,  # noqa: F401
                             wide_resnet, vgg, vit, fast94, pretrained)
from cifarlab.models.init import INITS, initialize
from cifarlab.models.registry import (MODELS, ModelSpec, build_model, check_switches, count_params, model_spec,
                                      reference, register_model)

__all__ = ["INITS", "MODELS", "ModelSpec", "build_model", "check_switches", "count_params", "initialize",
           "model_spec", "reference", "register_model"]
