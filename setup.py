"""Packaging glue that setup.cfg cannot express: the twistd plugin dropin.

``twisted/plugins/`` must stay a plain directory without ``__init__.py`` (it
is merged into Twisted's own ``twisted.plugins`` package at import time), so
it is listed here explicitly instead of being found by ``find_packages``.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["teleport_py", "teleport_py.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["teleport_py_plugins.py"]},
)
