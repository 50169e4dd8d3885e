"""Synthetic scenes and samplers over scene stores."""
