"""Build the Cython hot path in ``_native/`` as the ``logplexd._native`` package.

``logplexd/_native`` is a symlink to ``_native/`` so that in-place builds, editable
installs and Cython's cimport resolution (``from logplexd._native.records cimport ...``)
all see one tree.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["batch", "framer", "ring", "router", "encode", "wire", "resp"]

CFLAGS = ["-O3"]
if os.environ.get("LOGPLEXD_NATIVE_CFLAGS"):
    # For sanitizer and coverage builds (hardening issue): extra flags from the environment.
    CFLAGS += os.environ["LOGPLEXD_NATIVE_CFLAGS"].split()

extensions = [
    Extension(
        f"logplexd._native.{name}",
        [f"_native/{name}.pyx"],
        extra_compile_args=CFLAGS,
        extra_link_args=os.environ.get("LOGPLEXD_NATIVE_LDFLAGS", "").split(),
    )
    for name in MODULES
]

setup(
    package_dir={"logplexd._native": "_native"},
    ext_modules=cythonize(
        extensions,
        include_path=["."],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
