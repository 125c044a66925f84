"""The labelled dataset, schnetpack committee members, their training and the committee."""

from potentials.committee import Committee, CommitteePrediction
from potentials.dataset import Arrays, Dataset, DatasetError, Provenance
from potentials.model import EnergyModel, ModelSpec
from potentials.training import TrainingSettings, train_member

__all__ = [
    "Arrays", "Committee", "CommitteePrediction", "Dataset", "DatasetError", "EnergyModel",
    "ModelSpec", "Provenance", "TrainingSettings", "train_member",
]
