"""Model zoo: every architecture registered by canonical name plus the field's aliases.

``get_model("wrn40_2", num_classes=100)`` (Fast-Datafree spelling) and
``get_model("wrn_40_2", ...)`` (RepDistiller spelling) build the same network. Where another code
base uses a name for a *different* network, that network gets its own canonical name:
Distiller's (karanchahal) CIFAR ResNets / VGGs are ``kc_resnet8`` .. / ``kc_vgg11`` .., its
WRNs ``kc_wrn22_4`` (alias ``WRN22_4``), akamaster's option-A ResNets ``resnet20_a`` ... Every model
carries ``feature_taps`` (``stem``, ``stage1..N``, ``preact1..N``, ``pool``) for
:class:`engine.hooks.FeatureTaps`.
"""
from . import (  # noqa: F401  (importing a family module registers its models)
    cifar_zoo, distiller_cifar, imagenet, lenet, mobilenetv2, resnet, resnet_akamaster,
    resnet_cifar, shufflenetv1, shufflenetv2, vgg, wrn,
)
from ._factory import canonical_name, get_model, is_external, list_models, model_normalization, register_model

__all__ = ["get_model", "list_models", "register_model", "canonical_name", "model_normalization", "is_external"]
