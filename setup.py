"""Build pgap_kernels._C with CMake (ninja) and install the pgap_kernels and pgap packages.

Environment:
  PGAP_BUILD_CUDA=0   skip the CUDA kernels (the build warns loudly)
  PGAP_CUDA_ARCHS     CUDA architectures, e.g. "80;90" (default) or "90"
  PGAP_BUILD_TYPE     CMake build type (default Release)
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        build_cuda = os.environ.get("PGAP_BUILD_CUDA", "1").lower() not in ("0", "off", "false", "no")
        args = [
            "cmake", str(ROOT), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('PGAP_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPGAP_BUILD_CUDA={'ON' if build_cuda else 'OFF'}",
        ]
        if os.environ.get("PGAP_CUDA_ARCHS"):
            args.append(f"-DPGAP_CUDA_ARCHS={os.environ['PGAP_CUDA_ARCHS']}")
        if not build_cuda:
            print("\n*** pgap-kernels: PGAP_BUILD_CUDA=0 -> building WITHOUT the CUDA kernels ***\n",
                  file=sys.stderr)
        subprocess.run(args, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", str(os.cpu_count() or 2)],
                       cwd=build_dir, check=True)


setup(
    packages=find_packages(include=["pgap_kernels", "pgap_kernels.*"])
    + find_packages("python", include=["pgap", "pgap.*"]),
    package_dir={"pgap": "python/pgap"},
    ext_modules=[CMakeExtension("pgap_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
