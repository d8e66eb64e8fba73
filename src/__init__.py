"""MNIST CNN training pipeline: Hydra composes the run, Keras trains it, MLflow records it."""
