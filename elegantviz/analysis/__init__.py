"""Analysis of predictions: boundaries, confusion-pair errors and regions, attention."""
