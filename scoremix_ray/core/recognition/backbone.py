"""IResNet (Deng et al., ArcFace; insightface `recognition/arcface_torch/backbones/iresnet.py`), width and
depth from config, with insightface's parameter names, so an arcface_torch `backbone.pth` loads into it and
its state dict loads into arcface_torch (`recognition/insightface.py`).

Block (pre-activation "improved" residual): bn1 - conv1 3x3 - bn2 - prelu - conv2 3x3 (stride) - bn3, plus a
`downsample` 1x1-conv/BN shortcut when the shape changes. Stem: conv1 3x3 (stride 1) - bn1 - prelu; stages
`layer1..layerK`. Head: bn2 - flatten - dropout - fc - features (BN1d), giving the embedding. widths (64, 128,
256, 512) with blocks (3, 4, 14, 3) at 112x112 is IResNet-50; the embedded default uses a few hundred thousand
parameters at 16x16.
"""

from __future__ import annotations

import torch
from torch import nn


class IBasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.downsample = (
            None
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out, eps=1e-5))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


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
        side = image_size // 2 ** len(widths)
        if side < 1:
            raise ValueError(f"recognizer: {len(widths)} stride-2 stages are too many for {image_size}px images")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        self.num_stages, c = len(widths), widths[0]
        for k, (w, n) in enumerate(zip(widths, blocks), start=1):
            self.add_module(
                f"layer{k}", nn.Sequential(IBasicBlock(c, w, 2), *[IBasicBlock(w, w, 1) for _ in range(n - 1)])
            )
            c = w
        self.bn2 = nn.BatchNorm2d(c, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for k in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{k}")(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))
