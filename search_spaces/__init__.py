"""Built-in search spaces, installed as the package data tuner.spaces (see setup.py); read by tuner.space."""
