"""Build of the optional compiled kernel (everything else is in pyproject.toml).

``minifw.backend._native`` is one C file with no dependency beyond the C compiler: a
direct convolution that the NumPy backend uses when it is there (see
``minifw/backend/_native_conv.py``). ``optional=True``: where it cannot be compiled (no
compiler), minifw installs without it and keeps its pure NumPy path.
"""

import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-std=gnu11"]
setup(
    ext_modules=[
        Extension(
            "minifw.backend._native",
            ["minifw/backend/_native.c"],
            extra_compile_args=args,
            optional=True,
        )
    ]
)
