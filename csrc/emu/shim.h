#pragma once
// Just enough of CUDA for csrc/cuda/kernels.cuh to compile as C++ and run on
// the host, one CUDA thread after another (see backend.h). Deliberately no
// __syncthreads, shared memory, warp operations or atomics: no kernel needs
// them, and with them a kernel's threads would have to run concurrently (one
// std::thread each, std::barrier for __syncthreads). A kernel that starts
// using one fails to compile here until the shim grows it.

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};

// The launch being run on this host thread and the CUDA thread within it.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
