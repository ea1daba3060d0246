#pragma once
// Whether bfloat16 and float16 layers run natively on this CPU: products on
// operands of that type with float accumulation, through oneDNN's brgemm
// (brgemm_pairs.h), the cell and state in float; otherwise in float on upcast
// copies. Decided once per process, from what oneDNN will run here, then
// checked by running it.

#include <c10/core/ScalarType.h>

#include <string>

namespace lstm_ext::cpu {

// Whether oneDNN's brgemm for dtype, as ATen calls it here, runs on the CPU's
// dot products of that type and takes B in VNNI pairs, the one layout the
// native path lays out: bfloat16 where the CPU has AVX512_BF16 or AMX-BF16
// and oneDNN's ISA ceiling (ONEDNN_MAX_CPU_ISA) leaves them; float16 only
// where oneDNN packs it in pairs (AMX-FP16: at::native::cpublas::could_pack),
// since on AVX512_FP16 alone its kernel takes B unpaired. With the kernels at
// the AVX512 level (ATen's level, which ATEN_CPU_CAPABILITY lowers).
bool pairs_kernel(c10::ScalarType dtype);

struct NativeChoice {
  bool on = false;
  bool amx = false;  // the products run on AMX tiles
  std::string why;   // why on, or why off
};

// The choice for dtype, once per process: a pairs kernel, allowed by
// LSTM_EXT_CPU_NATIVE ("0": none; a comma list of dtypes; by default
// bfloat16 only, the one path a machine of ours has run: float16 on AMX-FP16
// is opt-in), and a probe product through brgemm_pairs that comes out exact.
const NativeChoice& native_choice(c10::ScalarType dtype);

// Whether dtype layers run natively now: the choice, oneDNN enabled
// (torch.backends.mkldnn), and not turned off by exchange_native_off(true)
// (tests), which returns the previous setting.
bool runs_native(c10::ScalarType dtype);
bool exchange_native_off(bool off);

}  // namespace lstm_ext::cpu
