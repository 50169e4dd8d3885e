"""Training, prediction and evaluation: orchestration over the models, offload and io packages."""
