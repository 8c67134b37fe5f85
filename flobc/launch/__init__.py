"""The top of the house: the command line, local clusters, the demo and experiments.
These modules import everything and are imported by nothing of the project."""
