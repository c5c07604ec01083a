"""Prunable model families: the one interface training and export use, and the registry of them.

A family is a kind of network whose compute shrinks by dropping *units* (a NAC's processor
modules; a Neural Interpreter's functions). Training and export see only this protocol, so a new
family lands as its model file, which implements it, plus one line in `FAMILIES` below.

Shapes: B batch, U units; x is a raw or normalised batch (B, *input_shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from model.interpreter import INTERPRETER_FAMILY
from model.nac import NAC_FAMILY
from model.nfm import NFM_FAMILY


class Family(Protocol):
    name: str  # the manifest's `family`, e.g. "nac"
    unit: str  # what a level drops, e.g. "modules"
    # units every order starts with (an NFM's pass 1, which every level runs): the random-order
    # control permutes only the rest, so at each level it keeps as many units of the same kind
    leading_units: int

    @property
    def presets(self) -> Mapping[str, Mapping[str, object]]:
        """Model sizes by name; each dataset names the one that suits it (model.data)."""
        ...

    def build(
        self, input_shape: tuple[int, ...], num_classes: int, preset: str, overrides: Mapping[str, Any]
    ) -> nn.Module:
        """A freshly initialised model of a preset, some config fields overridden."""
        ...

    def config(self, model: nn.Module) -> dict[str, Any]:
        """The model's config as JSON; `from_config` rebuilds the same architecture from it."""
        ...

    def from_config(self, config: Mapping[str, Any]) -> nn.Module: ...

    def input_shape(self, model: nn.Module) -> tuple[int, ...]: ...

    def units(self, model: nn.Module) -> int:
        """U: how many units the full model has."""
        ...

    def ranking(self, model: nn.Module, x: Tensor | None = None) -> Tensor:
        """(U,) unit indices, the most important first: a level keeps a prefix of it. `x`, a
        normalised validation split, is for a family that ranks by what its units do on data
        (after training); None: what the model alone says (during training)."""
        ...

    def settings(self, model: nn.Module, fraction: Fraction) -> tuple[int, dict[str, int]]:
        """The level at a cost `fraction` of full: units kept, and its other knobs ({} if none)."""
        ...

    def forward(self, model: nn.Module, x: Tensor, keep: Tensor | None) -> Tensor:
        """Logits (B, classes) of the model running only the kept units (None: all)."""
        ...

    def level(self, model: nn.Module, keep: Tensor, knobs: Mapping[str, int] | None = None) -> nn.Module:
        """A new, smaller model holding only the kept units, at the other knobs' values (None:
        the model's own): what a level's graph is built from."""
        ...

    def knobs(self, model: nn.Module) -> dict[str, int]:
        """A level's other settings besides its unit count (e.g. iterations); {} if none."""
        ...

    def flops(self, model: nn.Module) -> int:
        """Multiply-adds x2 per example of this (possibly pruned) model."""
        ...

    def export_module(self, model: nn.Module, mean: Tensor, std: Tensor, temperature: float) -> nn.Module:
        """The model ready for ONNX: raw input (B, *input_shape) -> (logits / temperature,
        softmax of those), normalisation in the graph."""
        ...


@runtime_checkable
class RanksOnData(Protocol):
    """A family whose ranking is measured on data rather than read off the weights (an NFM ranks
    its reads by their effect on validation loss): model.train calls `rank_on` once after training,
    and `ranking` answers the stored order from then on."""

    def rank_on(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """(U,) unit indices, the most important first, measured on normalised x and labels y."""
        ...


FAMILIES: dict[str, Family] = {
    NAC_FAMILY.name: NAC_FAMILY,
    INTERPRETER_FAMILY.name: INTERPRETER_FAMILY,
    NFM_FAMILY.name: NFM_FAMILY,
}
DEFAULT_FAMILY = NAC_FAMILY.name


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
