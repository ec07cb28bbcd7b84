"""Maps the repository's top-level folders onto the ``kuberl`` namespace.

``operator/`` must never be importable as the top-level name ``operator`` (it would shadow the
standard library), so each folder is installed under ``kuberl.<name>``.
"""

from setuptools import find_packages, setup

ROOTS = {
    "kuberl": "kuberl",
    "kuberl.api": "api",
    "kuberl.operator": "operator",
    "kuberl.worker": "worker",
}

packages: list[str] = []
for package, folder in ROOTS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS, package_data={"kuberl.api": ["presets/*.yaml"]})
