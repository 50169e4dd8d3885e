"""Class tables, synthetic scenes and samplers over scene stores."""
