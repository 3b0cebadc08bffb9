"""The one L2 norm of a model or of an update's move from its base, in float64, one tensor at a time."""

import math
from collections.abc import Mapping

import torch

Tensors = Mapping[str, torch.Tensor]


def l2_norm(tensors: Tensors) -> float:
    """sqrt(sum of squares) over every tensor, as if they were one flat vector."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in tensors.values()))


def delta_norm(base: Tensors, tensors: Tensors) -> float:
    """L2 norm of (tensors - base): how far an update moves the model it was trained from."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(tensors[name] - b, dtype=torch.float64)) ** 2
                         for name, b in base.items()))
