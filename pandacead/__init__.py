"""pandacead: the differentially private training worker of a Pandacea earner host."""

from pandacead._version import __version__

__all__ = ["__version__"]
