"""Folder mapping: the top-level folders install as ``accumulus.<folder>``.

A static ``packages`` list misses subpackages in the wheel, so they are found per
folder here (TOOLCHAIN.md, "Packaging with top-level folders").
"""
from setuptools import find_packages, setup

FOLDERS = ["quant", "compiler", "hw", "sim", "boards"]

package_dir = {"accumulus": "accumulus"}
packages = ["accumulus"] + ["accumulus." + p for p in find_packages("accumulus")]
for folder in FOLDERS:
    packages.append(f"accumulus.{folder}")
    package_dir[f"accumulus.{folder}"] = folder
    for sub in find_packages(folder):
        packages.append(f"accumulus.{folder}.{sub}")
        package_dir[f"accumulus.{folder}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "accumulus.compiler": ["schema/*.json", "*.json"],
        "accumulus.boards": ["data/*.json"],
    },
    include_package_data=True,
)
