"""sr-shrink: data-free progressive distillation of super-resolution networks for phones."""

__version__ = "0.1.0"
