"""Builds lstm_ext._C: the CPU op always, the CUDA op when it can be compiled;
and lstm_ext._emu, the CUDA kernels emulated on the CPU for the tests.

LSTM_EXT_CUDA=1 or 0 forces the CUDA part on or off; by default it is built
when torch is a CUDA build and nvcc exists. No other environment is needed.
"""

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
# torch.utils.cpp_extension reads CUDA_HOME when imported. It guesses the CUDA
# root from the nvcc on PATH, which is wrong when that nvcc is a wrapper script
# (as /usr/local/bin/nvcc is on our machines): prefer the standard place.
STANDARD_CUDA = Path("/usr/local/cuda")
if "CUDA_HOME" not in os.environ and (STANDARD_CUDA / "bin" / "nvcc").exists():
    os.environ["CUDA_HOME"] = str(STANDARD_CUDA)

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

# The vectorised CPU kernels (csrc/cpu/kernels.cpp) are compiled once per
# instruction-set level that ATen dispatches between, each with that level's
# flags (ATen's own); every other file gets no vector-ISA flag, as torch's own
# baseline code, so the build runs on any CPU torch runs on (csrc/cpu/kernels.h).
CPU_KERNELS = "csrc/cpu/kernels.cpp"
X86_LEVELS = {
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma",
               "-mf16c"],
}
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
CPU_LEVELS = {"DEFAULT": [], **(X86_LEVELS if IS_X86 else {})}
# With no GPU to look at, the architectures built: Ampere and Hopper, and PTX
# that newer GPUs compile when they load it.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
# The Python modules are empty stubs (csrc/library.cpp): the ops reach Python through
# torch's dispatcher, not the Python C API. So they are built against Python's
# limited API (py_limited_api: torch defines Py_LIMITED_API for 3.10), and one
# abi3 wheel serves every Python from 3.10 on.


def want_cuda() -> bool:
    forced = os.environ.get("LSTM_EXT_CUDA")
    if forced in ("0", "1"):
        return forced == "1"
    return torch.version.cuda is not None and nvcc() is not None


def nvcc():
    if cpp_extension.CUDA_HOME is not None:
        path = Path(cpp_extension.CUDA_HOME, "bin", "nvcc")
        if path.exists():
            return str(path)
    return shutil.which("nvcc")


def major(version: str) -> str:
    return version.split(".")[0]


def check_cuda_versions() -> None:
    """One clear message, before any compiling, when nvcc's CUDA is not torch's."""
    if torch.version.cuda is None:
        sys.exit(f"lstm_ext: LSTM_EXT_CUDA=1, but torch {torch.__version__} is not a CUDA build")
    path = nvcc()
    if path is None:
        sys.exit("lstm_ext: LSTM_EXT_CUDA=1, but no nvcc was found (set CUDA_HOME)")
    found = re.search(r"release (\d+\.\d+)", subprocess.run(
        [path, "--version"], capture_output=True, text=True).stdout)
    if found and major(found[1]) != major(torch.version.cuda):
        sys.exit(
            f"lstm_ext: nvcc at {path} is CUDA {found[1]}, but torch {torch.__version__} was "
            f"built with CUDA {torch.version.cuda}: point CUDA_HOME at a CUDA "
            f"{major(torch.version.cuda)}.x toolkit, or build without CUDA (LSTM_EXT_CUDA=0)"
        )


def cuda_libraries():
    """(include dirs, library dirs) of the CUDA libraries that torch was built
    with, where pip installed them: the nvidia wheels torch depends on. ATen's
    CUDA headers include cuBLAS's, cuSPARSE's and cuSOLVER's, which a bare
    toolkit may lack; a toolkit's own come after them on the search path."""
    try:
        import nvidia
    except ImportError:
        return [], []
    wanted = f"cu{major(torch.version.cuda)}"
    packages = [p for base in nvidia.__path__ for p in sorted(Path(base).iterdir())
                if not (re.fullmatch(r"cu\d+", p.name) and p.name != wanted)]
    return ([str(p / "include") for p in packages if (p / "include").is_dir()],
            [str(p / "lib") for p in packages if (p / "lib").is_dir()])


def cublas_link_args(library_dirs):
    """The cuBLAS of torch's CUDA version (the one torch loads), which the
    CUDA executor calls directly: only versioned names may exist."""
    name = f"libcublas.so.{major(torch.version.cuda)}"
    toolkit = [os.path.join(cpp_extension.CUDA_HOME, d) for d in ("lib64", "lib")]
    for directory in [*library_dirs, *toolkit]:
        if Path(directory, name).exists():
            return [f"-L{directory}", f"-l:{name}"]
    sys.exit(f"lstm_ext: {name} (torch's CUDA {torch.version.cuda}) was not found in "
             f"{[*library_dirs, *toolkit]}")


def extension():
    sources = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/*.cpp"))]
    sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/cpu/*.cpp"))
                if str(p.relative_to(ROOT)) != CPU_KERNELS]
    macros = [(f"LSTM_EXT_CPU_{level}", None) for level in CPU_LEVELS if level != "DEFAULT"]
    kwargs = dict(extra_compile_args={"cxx": ["-O3", "-fopenmp"]}, extra_link_args=["-fopenmp"],
                  define_macros=macros, py_limited_api=True)
    if not want_cuda():
        ext = cpp_extension.CppExtension("lstm_ext._C", sources, **kwargs)
    else:
        check_cuda_versions()
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        include_dirs, library_dirs = cuda_libraries()
        sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/cuda/*.cu"))]
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-Xptxas=-v,--warn-on-spills"]
        kwargs["include_dirs"] = include_dirs
        kwargs["extra_link_args"] += cublas_link_args(library_dirs)
        kwargs["define_macros"].append(("LSTM_EXT_CUDA", "1"))
        ext = cpp_extension.CUDAExtension("lstm_ext._C", sources, **kwargs)
    ext.cpu_kernels = True
    return ext


def emulated_extension():
    # Plain C++, so that every build, with nvcc or without, can test the CUDA
    # kernels and executor (csrc/emu). Its own module and op namespace keep it
    # out of lstm_ext._C and torch.ops.lstm_ext.
    sources = ["csrc/checks.cpp", "csrc/gate_order.cpp", "csrc/steps.cpp"]
    sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/emu/*.cpp"))]
    return cpp_extension.CppExtension("lstm_ext._emu", sources, extra_compile_args={"cxx": ["-O2"]},
                                      py_limited_api=True)


class BuildExtension(cpp_extension.BuildExtension):
    """torch's, and for an extension with `cpu_kernels`, CPU_KERNELS compiled
    once per level into its own object, linked after the other objects: where a
    level's object and a baseline one hold the same inline function, the linker
    keeps the first copy, compiled for the baseline."""

    def build_extension(self, ext):
        if getattr(ext, "cpu_kernels", False):
            cxx = ext.extra_compile_args["cxx"]
            objects = []
            for level, flags in CPU_LEVELS.items():
                objects += self.compiler.compile(
                    [CPU_KERNELS], output_dir=os.path.join(self.build_temp, "cpu_kernels", level),
                    macros=[*ext.define_macros, ("CPU_CAPABILITY", level),
                            (f"CPU_CAPABILITY_{level}", None)],
                    include_dirs=ext.include_dirs, extra_postargs={"cxx": [*cxx, *flags]},
                    depends=ext.depends)
            ext.extra_objects = [*ext.extra_objects, *objects]
        super().build_extension(ext)


setup(
    ext_modules=[extension(), emulated_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
