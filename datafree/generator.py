"""Image generators for data-free synthesis.

Layer for layer the generators of Fast-Datafree (``datafree/models/generator.py``); parameter
counts match the reference
(``Generator(nz=256)``: 2,328,899; ``DeepGenerator``: 592,451 without the reference's unused
``l1`` Linear, which is left out on purpose: it carried no gradient and crashed FOMAML).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _up_conv(cin: int, cout: int) -> list:
    return [nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]


class Generator(nn.Module):
    """DCGAN-style generator: z (B x nz) -> images (B x nc x size x size) in [0, 1].

    Linear(nz -> 2*ngf * (size/4)^2) -> BN -> [Upsample x2, Conv3x3, BN, LeakyReLU(0.2)] x 2
    (2*ngf -> 2*ngf -> ngf) -> Conv3x3(ngf -> nc) -> Sigmoid.
    """

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int = 32, nc: int = 3):
        super().__init__()
        if img_size % 4:
            raise ValueError(f"Generator needs img_size divisible by 4, got {img_size}")
        self.nz, self.ngf, self.img_size, self.nc = nz, ngf, img_size, nc
        self.init_size = img_size // 4
        self.l1 = nn.Linear(nz, 2 * ngf * self.init_size ** 2)
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            *_up_conv(2 * ngf, 2 * ngf),
            *_up_conv(2 * ngf, ngf),
            nn.Conv2d(ngf, nc, 3, padding=1),
            nn.Sigmoid(),
        )

    def latent_shape(self, batch_size: int) -> tuple:
        return (batch_size, self.nz)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.l1(z).view(z.shape[0], 2 * self.ngf, self.init_size, self.init_size)
        return self.conv_blocks(x)

    def reset_l0(self) -> None:
        """Re-initialise the first Linear layer (Fast-Datafree ``--reset_l0``). Unlike the
        reference fix, the BatchNorm after it is *not* touched: re-drawing its weight from
        N(0, 0.02) would set the BN scale to about zero."""
        nn.init.normal_(self.l1.weight, 0.0, 0.02)
        nn.init.zeros_(self.l1.bias)

    def reset_bn(self) -> None:
        """Reset every BatchNorm's running statistics and affine parameters (``--reset_bn``)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()


class DeepGenerator(nn.Module):
    """ImageNet-size generator with a *spatial* latent: z (B x nz x s x s) -> images
    (B x nc x 16s x 16s), s = img_size / 16 (14 for 224).

    Conv3x3(nz -> 2*ngf), BN, LeakyReLU -> [Upsample x2, Conv3x3, BN, LeakyReLU] x 4
    (2ngf -> 2ngf -> ngf -> ngf -> ngf) -> Conv3x3(ngf -> nc) -> Sigmoid.
    """

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int = 224, nc: int = 3):
        super().__init__()
        if img_size % 16:
            raise ValueError(f"DeepGenerator needs img_size divisible by 16, got {img_size}")
        self.nz, self.ngf, self.img_size, self.nc = nz, ngf, img_size, nc
        self.init_size = img_size // 16
        self.conv_blocks = nn.Sequential(
            nn.Conv2d(nz, 2 * ngf, 3, padding=1, bias=False), nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2, inplace=True),
            *_up_conv(2 * ngf, 2 * ngf), *_up_conv(2 * ngf, ngf), *_up_conv(ngf, ngf), *_up_conv(ngf, ngf),
            nn.Conv2d(ngf, nc, 3, padding=1),
            nn.Sigmoid(),
        )

    def latent_shape(self, batch_size: int) -> tuple:
        return (batch_size, self.nz, self.init_size, self.init_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_blocks(z)

    def reset_l0(self) -> None:
        first = self.conv_blocks[0]
        nn.init.normal_(first.weight, 0.0, 0.02)

    def reset_bn(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
