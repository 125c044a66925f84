"""The labelled dataset, schnetpack committee members, their training and the committee."""

from advloop.potentials.committee import Committee, CommitteePrediction
from advloop.potentials.dataset import Arrays, Dataset, DatasetError, Provenance
from advloop.potentials.model import EnergyModel, ModelSpec
from advloop.potentials.training import TrainingSettings, train_member

__all__ = [
    "Arrays",
    "Committee",
    "CommitteePrediction",
    "Dataset",
    "DatasetError",
    "EnergyModel",
    "ModelSpec",
    "Provenance",
    "TrainingSettings",
    "train_member",
]
