"""llmkit: train, shrink and run transformer language models on your own hardware."""

__version__ = "0.1.0"
