"""Builds lstm_ext._C: the CPU op always, the CUDA op when it can be compiled;
and lstm_ext._emu, the CUDA kernels emulated on the CPU for the tests.

LSTM_EXT_CUDA=1 or 0 forces the CUDA part on or off; by default it is built
when torch is a CUDA build and nvcc exists. No other environment is needed.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
CUDA_ROOT = Path("/usr/local/cuda")

# torch.utils.cpp_extension reads these when imported. /usr/local/bin/nvcc is a
# wrapper script, so torch would guess /usr/local as the CUDA root; with no GPU
# to query it cannot pick architectures either.
if "CUDA_HOME" not in os.environ and CUDA_ROOT.is_dir():
    os.environ["CUDA_HOME"] = str(CUDA_ROOT)
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def want_cuda() -> bool:
    forced = os.environ.get("LSTM_EXT_CUDA")
    if forced in ("0", "1"):
        return forced == "1"
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and (
        shutil.which("nvcc") is not None
        or Path(cpp_extension.CUDA_HOME, "bin", "nvcc").exists()
    )


def cpu_flags() -> list[str]:
    # The cell passes use at::vec, which picks AVX2 or AVX-512 code only when
    # told to (ATen builds each kernel once per level and dispatches at run
    # time). The extension is built on the machine that runs it: follow its CPU.
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    avx2 = ["-mavx2", "-mfma"]
    avx512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
    if {f[2:] for f in avx2 + avx512} <= flags:
        return [*avx2, *avx512, "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {f[2:] for f in avx2} <= flags:
        return [*avx2, "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def extension():
    sources = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/*.cpp"))]
    sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/cpu/*.cpp"))]
    cxx = ["-O3", "-fopenmp", *cpu_flags()]
    kwargs = dict(extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    if not want_cuda():
        return cpp_extension.CppExtension("lstm_ext._C", sources, **kwargs)

    import nvidia  # the CUDA build of torch ships the headers ATen's CUDA code needs

    nvidia_cuda = os.path.join(nvidia.__path__[0], "cu13")
    sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/cuda/*.cu"))]
    kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-Xptxas=-v,--warn-on-spills"]
    kwargs["include_dirs"] = [os.path.join(nvidia_cuda, "include")]
    # The GEMMs call cuBLAS, the one torch loads (only the versioned name exists).
    kwargs["extra_link_args"] += ["-L" + os.path.join(nvidia_cuda, "lib"), "-l:libcublas.so.13"]
    kwargs["define_macros"] = [("LSTM_EXT_CUDA", "1")]
    return cpp_extension.CUDAExtension("lstm_ext._C", sources, **kwargs)


def emulated_extension():
    # Plain C++, so that every build, with nvcc or without, can test the CUDA
    # kernels and executor (csrc/emu). Its own module and op namespace keep it
    # out of lstm_ext._C and torch.ops.lstm_ext.
    sources = ["csrc/checks.cpp", "csrc/steps.cpp"]
    sources += [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/emu/*.cpp"))]
    return cpp_extension.CppExtension("lstm_ext._emu", sources, extra_compile_args={"cxx": ["-O2"]})


setup(
    ext_modules=[extension(), emulated_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
