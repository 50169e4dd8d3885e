"""Plots (matplotlib) and notebook widgets."""
