"""Torch building blocks: MLPs and the convolutional encoders/decoders of disentanglement_lib."""
from .mlp import MLP
from .conv import Conv28Decoder, Conv28Encoder, Conv64Decoder, Conv64Encoder, build_encoder_decoder
from .masked import MaskedConv2d, WindowPixelCNN  # noqa: F401  (issue 6)

__all__ = ["MLP", "Conv64Encoder", "Conv64Decoder", "Conv28Encoder", "Conv28Decoder", "build_encoder_decoder"]
