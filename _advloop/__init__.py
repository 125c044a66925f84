"""advloop: adversarial active learning for neural interatomic potentials.

The subpackages are the folders at the top of the repository (pyproject.toml maps them):

- :mod:`advloop.potentials`: the labelled dataset, schnetpack models, training, the committee;
- :mod:`advloop.adversarial`: the adversarial attack, the baselines, selection;
- :mod:`advloop.calculators`: PySCF DFT and the committee as ASE calculators, the labeller;
- :mod:`advloop.flows`: run configuration, the Prefect flows, the command line.

Importing advloop imports none of them.
"""
