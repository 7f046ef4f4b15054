"""IResNet (Deng et al., ArcFace; insightface `backbones/iresnet.py`), width and depth from config.

Block (pre-activation "improved" residual): BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus a
1x1-conv/BN shortcut when the shape changes. Stem: conv3x3 (stride 1) - BN - PReLU. Head: BN - dropout -
flatten - FC - BN1d, giving the embedding. widths (64, 128, 256, 512) with blocks (3, 4, 14, 3) at 112x112
is IResNet-50; the embedded default uses a few hundred thousand parameters at 16x16.
"""

from __future__ import annotations

import torch
from torch import nn


class IBasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in, eps=1e-5),
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5),
            nn.PReLU(c_out),
            nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out, eps=1e-5))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IResNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        embedding_dim: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("recognizer.widths and recognizer.blocks need the same length (one entry per stage)")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0], eps=1e-5),
            nn.PReLU(widths[0]),
        )
        layers, c = [], widths[0]
        for w, n in zip(widths, blocks):
            layers += [IBasicBlock(c, w, 2)] + [IBasicBlock(w, w, 1) for _ in range(n - 1)]
            c = w
        self.stages = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        if side < 1:
            raise ValueError(f"recognizer: {len(widths)} stride-2 stages are too many for {image_size}px images")
        self.head = nn.Sequential(
            nn.BatchNorm2d(c, eps=1e-5),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(c * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, eps=1e-5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
