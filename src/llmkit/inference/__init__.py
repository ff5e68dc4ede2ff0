"""Inference: loading a model to run it, which task a checkpoint fits, and the shared parts of the runners."""
