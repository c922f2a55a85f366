from setuptools import setup

setup(
    name="usercr",
    version="0.1.0",
    description="Checkpoint/restart of Linux processes on stock kernels",
    packages=["usercr", "usercr.arch", "usercr.headers"],
    # the C API of self-checkpoint, built with the cffi module (build_native.py)
    package_data={"usercr": ["native/libusercr.a", "native/include/usercr.h"]},
    python_requires=">=3.9",
    install_requires=["cffi>=1.15", "pyelftools"],
    extras_require={"test": ["pytest", "pytest-cov"]},
    cffi_modules=["usercr/native/build_native.py:ffibuilder"],
    entry_points={
        "console_scripts": [
            "ckpt=usercr.cli:ckpt_main",
            "rstr=usercr.cli:rstr_main",
            "ckptinfo=usercr.cli:ckptinfo_main",
            "usercr=usercr.cli:usercr_main",
            "usercr-selfckpt=usercr.selfckpt:helper_main",
        ]
    },
    zip_safe=False,
    # The extension uses only the stable ABI: the wheel is tagged cp39-abi3 and serves every Python from 3.9.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
