"""The one vocabulary of property keys used across advloop.

Units: energies in eV, forces in eV/Å, positions and cells in Å.
"""

ENERGY = "energy"  # total potential energy, eV, shape [n_structures]
FORCES = "forces"  # eV/Å, shape [n_atoms, 3]
ENERGY_STD = "energy_std"  # committee standard deviation of the energy, eV
FORCES_STD = "forces_std"  # committee std of each atom's force vector, eV/Å, [n_atoms]

POSITIONS = "positions"  # Å, [n_atoms, 3]
NUMBERS = "numbers"  # atomic numbers, [n_atoms]
CELL = "cell"  # Å, [3, 3]
PBC = "pbc"  # [3] bool
