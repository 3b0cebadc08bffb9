"""The model zoo for tabular binary classification. Pure torch: the coordinator builds initial
weights with it and the site agent trains with it, so both agree on tensor names and shapes."""

import torch
from torch import nn

LOGISTIC_REGRESSION = "logistic_regression"
MLP = "mlp"


class LogisticRegression(nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.linear = nn.Linear(num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class Mlp(nn.Module):
    """One hidden layer with ReLU."""

    def __init__(self, num_features: int, hidden_units: int):
        super().__init__()
        self.hidden = nn.Linear(num_features, hidden_units)
        self.output = nn.Linear(hidden_units, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.hidden(x))).squeeze(-1)


def build_model(kind: str, num_features: int, hidden_units: int = 16) -> nn.Module:
    """A fresh model of `kind`; outputs one logit per row."""
    if num_features < 1:
        raise ValueError("A model needs at least one feature.")
    if kind == LOGISTIC_REGRESSION:
        return LogisticRegression(num_features)
    if kind == MLP:
        return Mlp(num_features, hidden_units)
    raise ValueError(f"Unknown model kind {kind!r}; expected {LOGISTIC_REGRESSION!r} or {MLP!r}.")


def initial_state(kind: str, num_features: int, hidden_units: int = 16, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic initial weights (float32, contiguous) for round 1."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(kind, num_features, hidden_units)
    finally:
        torch.random.set_rng_state(generator_state)
    return {name: tensor.detach().to(torch.float32).contiguous().clone() for name, tensor in model.state_dict().items()}
