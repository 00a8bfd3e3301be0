"""Only what pyproject.toml cannot say: ship the top-level search_spaces/ as the package data `tuner.spaces`.

search_spaces/ stays the one source of the built-in spaces; setuptools maps it into every wheel (and the sdist)
as tuner/spaces/*.yaml, which tuner.space reads with importlib.resources.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["tuner", "tuner.*"]), "tuner.spaces"],
    package_dir={"tuner.spaces": "search_spaces"},
    package_data={"tuner.spaces": ["*.yaml"]},
)
