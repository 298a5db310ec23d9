// Torch side of the fused local correlation (the kernel and its definition: local_corr.cu).
//
//   torch.ops.romav2_cuda_ext.local_correlation(Tensor f_A, Tensor f_B, Tensor warp, int radius)
//       -> Tensor  (float32, [B, H, W, (2 radius + 1)^2])
//
// Only a CUDA implementation is registered here; cuda_ext/__init__.py registers the fake (meta)
// implementation that torch.compile traces with, right after loading this library. The op is
// inference only: it has no autograd formula, and it refuses inputs that require grad while
// grad mode is on (run it under torch.no_grad() / torch.inference_mode()). The CPU path is
// romav2_core/local_correlation.py.
#include <cuda_runtime_api.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

namespace romav2_local_corr {
bool launch_local_corr(int dtype, const void* f_a, const int64_t* sa, const void* f_b,
                       const int64_t* sb, const float* warp, float* out, int B, int C, int H,
                       int W, int Hb, int Wb, int radius, cudaStream_t stream);
}  // namespace romav2_local_corr

namespace {

at::Tensor local_correlation_cuda(const at::Tensor& f_a, const at::Tensor& f_b,
                                  const at::Tensor& warp, int64_t radius) {
  TORCH_CHECK(f_a.dim() == 4, "local_correlation: f_A must be [B, C, H, W], got ", f_a.sizes());
  TORCH_CHECK(f_b.dim() == 4, "local_correlation: f_B must be [B, C, Hb, Wb], got ",
              f_b.sizes());
  TORCH_CHECK(warp.dim() == 4 && warp.size(3) == 2,
              "local_correlation: warp must be [B, H, W, 2], got ", warp.sizes());
  TORCH_CHECK(f_b.size(0) == f_a.size(0) && f_b.size(1) == f_a.size(1),
              "local_correlation: f_A ", f_a.sizes(), " and f_B ", f_b.sizes(),
              " differ in batch or channels");
  TORCH_CHECK(warp.size(0) == f_a.size(0) && warp.size(1) == f_a.size(2) &&
                  warp.size(2) == f_a.size(3),
              "local_correlation: warp ", warp.sizes(), " does not match f_A ", f_a.sizes());
  TORCH_CHECK(radius >= 0 && radius <= 100, "local_correlation: radius must be in [0, 100], got ",
              radius);
  TORCH_CHECK(f_a.scalar_type() == f_b.scalar_type(), "local_correlation: f_A (",
              f_a.scalar_type(), ") and f_B (", f_b.scalar_type(), ") differ in dtype");
  const auto st = f_a.scalar_type();
  int dtype = -1;
  if (st == at::kFloat) dtype = 0;
  if (st == at::kHalf) dtype = 1;
  if (st == at::kBFloat16) dtype = 2;
  TORCH_CHECK(dtype >= 0, "local_correlation: f_A/f_B must be float32, float16 or bfloat16, got ",
              st);
  TORCH_CHECK(warp.is_floating_point(), "local_correlation: warp must be floating point");
  TORCH_CHECK(f_a.is_cuda() && f_b.is_cuda() && warp.is_cuda(),
              "local_correlation: the CUDA kernel needs CUDA tensors");
  TORCH_CHECK(f_a.device() == f_b.device() && f_a.device() == warp.device(),
              "local_correlation: f_A, f_B and warp must be on one device");
  TORCH_CHECK(!c10::GradMode::is_enabled() ||
                  !(f_a.requires_grad() || f_b.requires_grad() || warp.requires_grad()),
              "local_correlation: the CUDA kernel is inference only (no backward); call it "
              "under torch.no_grad() or torch.inference_mode()");
  // Any strides (NCHW, channels-last, views): the kernel reads through them, no copy.
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(f_a.size(0) <= 65535, "local_correlation: batch must be <= 65535");
  TORCH_CHECK(f_a.size(1) <= kIntMax && f_a.size(2) * f_a.size(3) <= kIntMax &&
                  f_b.size(2) * f_b.size(3) <= kIntMax,
              "local_correlation: sizes too large");

  const c10::cuda::CUDAGuard guard(f_a.device());
  const int64_t B = f_a.size(0), C = f_a.size(1), H = f_a.size(2), W = f_a.size(3);
  const int64_t Hb = f_b.size(2), Wb = f_b.size(3);
  const int64_t K = (2 * radius + 1) * (2 * radius + 1);
  at::Tensor out = at::empty({B, H, W, K}, f_a.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  if (C == 0 || Hb == 0 || Wb == 0) return out.zero_();
  // The warp is tiny (B*H*W*2 values): a non-fp32 or strided one is converted; the features
  // never are.
  const at::Tensor w = warp.to(at::kFloat).contiguous();
  const int64_t sa[4] = {f_a.stride(0), f_a.stride(1), f_a.stride(2), f_a.stride(3)};
  const int64_t sb[4] = {f_b.stride(0), f_b.stride(1), f_b.stride(2), f_b.stride(3)};
  const bool launched = romav2_local_corr::launch_local_corr(
      dtype, f_a.const_data_ptr(), sa, f_b.const_data_ptr(), sb, w.const_data_ptr<float>(),
      out.mutable_data_ptr<float>(), static_cast<int>(B), static_cast<int>(C),
      static_cast<int>(H), static_cast<int>(W), static_cast<int>(Hb), static_cast<int>(Wb),
      static_cast<int>(radius), c10::cuda::getCurrentCUDAStream(f_a.device().index()).stream());
  TORCH_CHECK(launched, "local_correlation: no kernel for dtype code ", dtype);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(romav2_cuda_ext, m) {
  m.def("local_correlation(Tensor f_A, Tensor f_B, Tensor warp, int radius) -> Tensor");
}

TORCH_LIBRARY_IMPL(romav2_cuda_ext, CUDA, m) {
  m.impl("local_correlation", &local_correlation_cuda);
}
