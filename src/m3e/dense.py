"""sentence-transformers' Dense module: activation(linear(x)), after pooling."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from m3e.errors import M3EError

# sentence-transformers' activation names for Dense modules.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
    "torch.nn.modules.activation.GELU": nn.GELU,
    "torch.nn.modules.activation.Sigmoid": nn.Sigmoid,
}


class Dense(nn.Module):
    """sentence-transformers' Dense module: activation(linear(x))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None):
        super().__init__()
        activation = activation or "torch.nn.modules.linear.Identity"
        if activation not in ACTIVATIONS:
            raise M3EError(f"Dense activation {activation!r} is not supported")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.activation(self.linear(x))
        return out

    def st_config(self) -> dict[str, Any]:
        return {
            "in_features": self.linear.in_features,
            "out_features": self.linear.out_features,
            "bias": self.linear.bias is not None,
            "activation_function": self.activation_name,
        }
