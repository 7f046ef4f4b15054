"""Margin heads on cos(theta) = <normalise(embedding), normalise(W_j)>.

ArcFace (Deng et al. 2019): target logit s cos(theta_y + m), others s cos(theta_j). cos(theta + m) is not
monotonic once theta + m > pi, so past the threshold cos(theta) < cos(pi - m) the target logit falls back
to the monotonic cos(theta) - m sin(m)  (insightface's `th`/`mm` handling), and the gradient keeps pushing
theta down. With `easy_margin` the margin is applied only where cos(theta) > 0.
CosFace (Wang et al. 2018): target logit s (cos(theta_y) - m).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def arcface_target(cos: torch.Tensor, m: float, easy_margin: bool = False) -> torch.Tensor:
    """cos(theta + m) = cos cos(m) - sin sin(m), with the small-angle/large-angle fallbacks above."""
    sin = (1.0 - cos**2).clamp_min(0).sqrt()
    phi = cos * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        return torch.where(cos > 0, phi, cos)
    return torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)


class MarginHead(nn.Module):
    def __init__(self, embedding_dim: int, num_classes: int, kind: str = "arcface", s: float = 64.0, m: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * 0.01)
        self.kind, self.s, self.m = kind, s, m

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1, 1)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits with the margin applied to each row's target class (train time)."""
        cos = self.cosine(emb)
        tgt = cos.gather(1, labels[:, None])
        new = arcface_target(tgt, self.m) if self.kind == "arcface" else tgt - self.m
        return self.s * cos.scatter(1, labels[:, None], new)
