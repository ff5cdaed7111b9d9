"""cnn-swarm: train and serve ConvNet image classifiers with PyTorch, horizontally scaled."""

__version__ = "0.1.0"
