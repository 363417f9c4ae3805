"""Helpers the notebooks call: load runs, compare simulated with measured, plots."""
