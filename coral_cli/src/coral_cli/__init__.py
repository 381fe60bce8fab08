"""coral-ml: the git-like command line of Coral."""

__version__ = "0.1.0"
