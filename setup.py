"""Build script: packages rlvfast and compiles csrc/ through CMake into rlvfast._C.

The C++ CPU ops always build where torch, cmake and a C++ compiler are present; the
CUDA ops build only where nvcc and a CUDA build of torch are both present. Without
torch or cmake the build is skipped with a warning and rlvfast falls back to its
reference ops at run time. Build with `pip install --no-build-isolation .` after
installing torch: an isolated build env would fetch a second copy of torch.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            import torch
        except ImportError:
            print("rlvfast: WARNING: torch is not importable at build time; skipping the C++ "
                  "ops (install torch first and use --no-build-isolation)", file=sys.stderr)
            return
        cmake = shutil.which("cmake")
        if cmake is None:
            print("rlvfast: WARNING: cmake not found; skipping the C++ ops "
                  "(pip install cmake, then reinstall)", file=sys.stderr)
            return
        out_path = os.path.abspath(self.get_ext_fullpath(ext.name))
        out_dir = os.path.dirname(out_path)
        os.makedirs(out_dir, exist_ok=True)
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        with_cuda = bool(torch.version.cuda) and shutil.which("nvcc") is not None
        args = [
            cmake, "-S", ROOT, "-B", build_dir,
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DRLVFAST_OUTPUT_DIR={out_dir}",
            f"-DRLVFAST_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
            f"-DRLVFAST_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.check_call(args)
        subprocess.check_call([cmake, "--build", build_dir, "-j", str(os.cpu_count() or 2)])


setup(
    name="rlvfast",
    version="0.1.0",
    description="Kernel-backed RL^V: train one LLM as reasoner and verifier, then vote with its own scores",
    python_requires=">=3.10",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
    packages=["rlvfast", "rlvfast.models", "rlvfast.ops", "rlvfast.sampler", "rlvfast.tasks", "rlvfast.train",
              "rlvfast.eval", "rlvfast.kernels"],
    # Triton kernels live in the top-level kernels/ folder and ship as rlvfast.kernels.
    package_dir={"rlvfast": "rlvfast", "rlvfast.kernels": "kernels"},
    # The shipped tiny base model (~3.1 MB, built by python -m rlvfast.pretrain).
    package_data={"rlvfast.models": ["base/*"]},
    ext_modules=[CMakeExtension("rlvfast._C")],
    cmdclass={"build_ext": CMakeBuild},
    # the same functions `python -m rlvfast.<command>` runs (each returns the exit status)
    entry_points={"console_scripts": [
        "rlvfast-train = rlvfast.train.loop:main",
        "rlvfast-eval = rlvfast.eval.run:command",
        "rlvfast-info = rlvfast.info:main",
        "rlvfast-pretrain = rlvfast.pretrain:command",
    ]},
    install_requires=[
        # a range, not a pin: users keep their own (CUDA) torch; the README and CI install 2.13.0 (CPU)
        "torch>=2.4,<3",
        "triton>=3.3,<4",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "numpy>=1.26",
        "sympy>=1.12",
        "math-verify>=0.7,<1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "pyyaml>=6",
    ],
    extras_require={
        # pyarrow: a 55 MB wheel with no dependencies, so the .parquet loader is tested too
        "test": ["import-linter>=2.1", "pytest>=8", "pytest-benchmark>=4", "gguf>=0.10", "accelerate>=1.0", "pyarrow>=14",
                 "tensorboard>=2.14", "datasets>=2.14", "peft>=0.13"],
        "gguf": ["gguf>=0.10", "accelerate>=1.0"],
        "parquet": ["pyarrow>=14"],  # rlvfast.tasks.problems reads --data FILE.parquet
        "datasets": ["datasets>=2.14"],  # --data DIR saved with datasets' save_to_disk (no torch dependency)
        "lora": ["peft>=0.13"],  # --lora-r (rlvfast.models.lora); peft requires torch, kept by the range
        # --report-to: the trackers (rlvfast.train.trackers)
        "tensorboard": ["tensorboard>=2.14"],
        "wandb": ["wandb"],
        "trackio": ["trackio"],
        "bench": ["pytest-benchmark>=4", "liger-kernel", "trl"],
    },
)
