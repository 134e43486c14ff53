"""The CANDLE-UNO reference network (PyTorch).

One tower per feature type (RNA-seq; drug descriptors), 1000-1000-1000 ReLU
each with dropout; the drug tower is one module shared by every drug input
(single-drug data has one). Tower outputs are concatenated and go through 5 x
Dense(1000) ReLU with dropout 0.1, then Dense(1). About 16.2 M parameters at
942 genes and 5270 descriptors. Trained with Adamax (lr 1e-4) on MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_models.layers import n_parameters

__all__ = ["UnoModel", "UnoModelConfig", "n_parameters"]


@dataclass(frozen=True)
class UnoModelConfig:
    """Network shape. The defaults are the reference; pass narrow widths for a fast demo."""

    n_genes: int = 942
    n_descriptors: int = 5270
    tower: tuple[int, ...] = (1000, 1000, 1000)
    dense: tuple[int, ...] = (1000,) * 5
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.n_genes < 1 or self.n_descriptors < 1:
            raise ValueError(f"feature sizes must be >= 1, got {self.n_genes}, {self.n_descriptors}")
        if not self.tower or not self.dense or min(self.tower + self.dense) < 1:
            raise ValueError(f"tower {self.tower} and dense {self.dense} need at least one positive width each")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def as_dict(self) -> dict:
        return {"n_genes": self.n_genes, "n_descriptors": self.n_descriptors, "tower": list(self.tower),
                "dense": list(self.dense), "dropout": self.dropout}

    @classmethod
    def from_dict(cls, d: dict) -> UnoModelConfig:
        return cls(n_genes=int(d["n_genes"]), n_descriptors=int(d["n_descriptors"]), tower=tuple(d["tower"]),
                   dense=tuple(d["dense"]), dropout=float(d["dropout"]))


def mlp(n_in: int, widths: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Dense -> ReLU -> Dropout for each width."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(n_in, w), nn.ReLU(), nn.Dropout(dropout)]
        n_in = w
    return nn.Sequential(*layers)


class UnoModel(nn.Module):
    """``forward(cell, *drugs)`` -> predicted AUC, shape (batch,)."""

    def __init__(self, config: UnoModelConfig = UnoModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.cell_tower = mlp(config.n_genes, config.tower, config.dropout)
        self.drug_tower = mlp(config.n_descriptors, config.tower, config.dropout)
        self.head_layers = mlp(2 * config.tower[-1], config.dense, config.dropout)
        self.out = nn.Linear(config.dense[-1], 1)

    def forward(self, cell: torch.Tensor, *drugs: torch.Tensor) -> torch.Tensor:
        if not drugs:
            raise ValueError("UnoModel needs at least one drug input")
        if len(drugs) != 1:
            raise ValueError(f"this head takes one drug (single-drug responses), got {len(drugs)}")
        z = torch.cat([self.cell_tower(cell), *(self.drug_tower(d) for d in drugs)], dim=1)
        return self.out(self.head_layers(z)).squeeze(1)
