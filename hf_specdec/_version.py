"""The package version, in a module of its own so that modules writing it into files need not import the package
(importing `hf_specdec` from inside it would close an import circle)."""

__version__ = "0.1.0"
