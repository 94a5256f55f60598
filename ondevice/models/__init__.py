"""Models: interaction and prediction layers on top of an embedding layer."""

from ondevice.models.base import (
    MLP,
    MODEL_REGISTRY,
    CTRModel,
    RecModel,
    build_model,
    model_from_description,
)
from ondevice.models.blocknet import BlockNet
from ondevice.models.bprmf import BPRMF
from ondevice.models.dcn import DCN
from ondevice.models.deepfm import DeepFM
from ondevice.models.deepfwfm import DeepFwFM
from ondevice.models.fm import FM
from ondevice.models.optinter import OptInter
from ondevice.models.widedeep import WideDeep

__all__ = [
    "BPRMF",
    "BlockNet",
    "DCN",
    "FM",
    "MLP",
    "MODEL_REGISTRY",
    "OptInter",
    "CTRModel",
    "DeepFM",
    "DeepFwFM",
    "RecModel",
    "WideDeep",
    "build_model",
    "model_from_description",
]
