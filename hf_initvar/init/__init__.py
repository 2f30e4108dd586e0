"""Initialization registry: schemes, parameter roles, and applying a scheme to a model."""
