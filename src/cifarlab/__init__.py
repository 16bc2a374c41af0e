"""cifarlab: train, compare and ablate CNNs on the small-image benchmarks."""

__version__ = "0.1.0"
