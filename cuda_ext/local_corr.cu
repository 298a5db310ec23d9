// Fused local correlation for the RoMa v2 refiners (inference only, no backward).
//
//   out[b, y, x, k] = sum_c f_A[b, c, y, x] / sqrt(C) * bilinear(f_B[b, c], warp[b, y, x] + off_k)
//
//   * f_A [B, C, H, W], f_B [B, C, Hb, Wb], same dtype (fp32, fp16 or bf16), any strides: NCHW,
//     channels-last (the refiners' projected features are permuted BHWC tensors) or views, read
//     in place through their element strides;
//   * warp [B, H, W, 2] contiguous fp32, normalised coordinates in [-1, 1] (x first, then y);
//   * K = (2r + 1)^2 offsets, k = iy * (2r + 1) + ix, off_k = ((2 ix - 2r) / W, (2 iy - 2r) / H)
//     in normalised coordinates, i.e. whole steps of the *f_A* grid (H, W), as the official
//     romav2/local_correlation.py does (its window is built from f_A's h, w);
//   * bilinear sampling as torch.nn.functional.grid_sample(mode='bilinear',
//     padding_mode='zeros', align_corners=False): pixel coordinate ((g + 1) * size - 1) / 2,
//     floor / fraction, every neighbour outside the image contributes 0;
//   * accumulation in fp32, output fp32 [B, H, W, K].
//
// Parallelisation: one thread per (b, pixel, k). threadIdx.x / blockIdx.x walk the pixels of
// one image (neighbouring threads read neighbouring f_A pixels, and f_B taps that are close to
// each other wherever the warp is smooth), blockIdx.y is k, blockIdx.z is b. Each thread
// computes its 4 taps once and then loops over the C channels, reading f_A and the 4 f_B taps
// straight from global memory (through the read-only cache); with channels-last features that
// loop walks contiguous memory. No buffer besides the output is allocated.
//
// This file includes no torch header (only the CUDA toolkit's), so it compiles with nvcc against
// any torch install, the CPU wheels included; local_corr.cpp holds the torch side. The
// per-output arithmetic lives in __host__ __device__ functions: test/core/test_cuda_ext.py
// compiles this file with nvcc into a host program that runs corr_one() on the CPU and checks it
// against grid_sample, so the indexing and sampling maths is tested on machines without a GPU.
//
// fp16/bf16 features are read as such and widened to fp32 per element; products and sums are
// fp32; the output is always fp32. Inference only: there is no backward.

#include <cstdint>
#include <cmath>

#include <cuda_runtime_api.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define LC_HD __host__ __device__ __forceinline__

namespace romav2_local_corr {

LC_HD float to_float(float v) { return v; }
LC_HD float to_float(__half v) { return __half2float(v); }
LC_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Element strides of one batch element's [C, H, W] features (any layout).
struct Strides {
  int64_t c, y, x;
};

// The four bilinear taps of one sample: element offsets inside one channel (through the
// strides) and their weights. A tap outside the image gets weight 0 and offset 0 (a valid
// address), so the channel loop has no branch.
struct Taps {
  int64_t o00, o01, o10, o11;  // (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
  float w00, w01, w10, w11;
};

// grid_sample(align_corners=False) unnormalisation of a normalised coordinate.
LC_HD float unnormalise(float g, int size) {
  return ((g + 1.f) * static_cast<float>(size) - 1.f) * 0.5f;
}

// Taps for the sample at normalised (gx, gy) in an image of Hb x Wb pixels with strides sb,
// zero padding.
LC_HD Taps make_taps(float gx, float gy, int Hb, int Wb, Strides sb) {
  Taps t;
  t.o00 = t.o01 = t.o10 = t.o11 = 0;
  t.w00 = t.w01 = t.w10 = t.w11 = 0.f;
  const float px = unnormalise(gx, Wb);
  const float py = unnormalise(gy, Hb);
  // Far outside (or NaN): every tap is out of range. This also keeps floor() -> int in range.
  if (!(px > -2.f && px < static_cast<float>(Wb) + 1.f &&
        py > -2.f && py < static_cast<float>(Hb) + 1.f)) {
    return t;
  }
  const float fx0 = floorf(px);
  const float fy0 = floorf(py);
  const int x0 = static_cast<int>(fx0);
  const int y0 = static_cast<int>(fy0);
  const float ax = px - fx0;  // weight of column x0 + 1
  const float ay = py - fy0;  // weight of row y0 + 1
  const bool vx0 = x0 >= 0 && x0 < Wb;
  const bool vx1 = x0 + 1 >= 0 && x0 + 1 < Wb;
  const bool vy0 = y0 >= 0 && y0 < Hb;
  const bool vy1 = y0 + 1 >= 0 && y0 + 1 < Hb;
  const int64_t row0 = static_cast<int64_t>(y0) * sb.y;
  const int64_t row1 = row0 + sb.y;
  const int64_t col0 = static_cast<int64_t>(x0) * sb.x;
  const int64_t col1 = col0 + sb.x;
  if (vy0 && vx0) { t.o00 = row0 + col0; t.w00 = (1.f - ax) * (1.f - ay); }
  if (vy0 && vx1) { t.o01 = row0 + col1; t.w01 = ax * (1.f - ay); }
  if (vy1 && vx0) { t.o10 = row1 + col0; t.w10 = (1.f - ax) * ay; }
  if (vy1 && vx1) { t.o11 = row1 + col1; t.w11 = ax * ay; }
  return t;
}

// Plain loads (the pointers are const __restrict__, so the compiler may use the read-only
// path); fp32 goes explicitly through __ldg on the device.
template <typename T>
LC_HD T load(const T* p) { return *p; }
LC_HD float load(const float* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// One output value out[b, y, x, k]. fa: f_A[b] with strides sa, fb: f_B[b] with strides sb,
// warp_b: warp[b] (H*W*2, contiguous), pix = y * W + x.
template <typename scalar_t>
LC_HD float corr_one(const scalar_t* __restrict__ fa, Strides sa,
                     const scalar_t* __restrict__ fb, Strides sb,
                     const float* __restrict__ warp_b, int C, int H, int W, int Hb, int Wb,
                     int radius, int64_t pix, int k) {
  const int side = 2 * radius + 1;
  const int iy = k / side;
  const int ix = k - iy * side;
  // The window offset, in normalised units of the f_A grid, added to the warp before the
  // unnormalisation (the order of the official code).
  const float ox = static_cast<float>(2 * ix - 2 * radius) / static_cast<float>(W);
  const float oy = static_cast<float>(2 * iy - 2 * radius) / static_cast<float>(H);
  const float gx = warp_b[2 * pix] + ox;
  const float gy = warp_b[2 * pix + 1] + oy;
  const Taps t = make_taps(gx, gy, Hb, Wb, sb);
  if (t.w00 == 0.f && t.w01 == 0.f && t.w10 == 0.f && t.w11 == 0.f) {
    return 0.f;
  }
  const int64_t y = pix / W;
  const scalar_t* a = fa + y * sa.y + (pix - y * W) * sa.x;
  const scalar_t* bb = fb;
  float acc = 0.f;
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
  for (int c = 0; c < C; ++c) {
    const float s = t.w00 * to_float(load(bb + t.o00)) + t.w01 * to_float(load(bb + t.o01)) +
                    t.w10 * to_float(load(bb + t.o10)) + t.w11 * to_float(load(bb + t.o11));
    acc += to_float(load(a)) * s;
    a += sa.c;
    bb += sb.c;
  }
  return acc * (1.f / sqrtf(static_cast<float>(C)));
}

template <typename scalar_t>
__global__ void local_corr_kernel(const scalar_t* __restrict__ f_a, int64_t sa_b, Strides sa,
                                  const scalar_t* __restrict__ f_b, int64_t sb_b, Strides sb,
                                  const float* __restrict__ warp, float* __restrict__ out,
                                  int C, int H, int W, int Hb, int Wb, int radius) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= HW) return;
  const int k = blockIdx.y;
  const int b = blockIdx.z;
  const int K = gridDim.y;
  const float* wb = warp + static_cast<int64_t>(b) * HW * 2;
  out[(static_cast<int64_t>(b) * HW + pix) * K + k] = corr_one<scalar_t>(
      f_a + b * sa_b, sa, f_b + b * sb_b, sb, wb, C, H, W, Hb, Wb, radius, pix, k);
}

template <typename scalar_t>
void launch_typed(const void* f_a, const int64_t* sa, const void* f_b, const int64_t* sb,
                  const float* warp, float* out, dim3 grid, int threads, int C, int H, int W,
                  int Hb, int Wb, int radius, cudaStream_t stream) {
  local_corr_kernel<scalar_t><<<grid, threads, 0, stream>>>(
      static_cast<const scalar_t*>(f_a), sa[0], Strides{sa[1], sa[2], sa[3]},
      static_cast<const scalar_t*>(f_b), sb[0], Strides{sb[1], sb[2], sb[3]}, warp, out, C, H,
      W, Hb, Wb, radius);
}

// Host-side launcher (no torch types, so this file needs only the CUDA toolkit's headers and
// compiles against any torch install; local_corr.cpp owns the tensors, the checks, the device
// guard, the stream and the launch check). dtype: 0 = float32, 1 = float16, 2 = bfloat16
// (c10::Half and c10::BFloat16 have the bit layout of __half and __nv_bfloat16). f_a / f_b are
// device pointers with element strides sa / sb = (batch, channel, row, column); warp is
// contiguous fp32 [B, H, W, 2]; out is contiguous [B, H, W, K] fp32. Returns false for an
// unknown dtype (nothing launched).
bool launch_local_corr(int dtype, const void* f_a, const int64_t* sa, const void* f_b,
                       const int64_t* sb, const float* warp, float* out, int B, int C, int H,
                       int W, int Hb, int Wb, int radius, cudaStream_t stream) {
  constexpr int kThreads = 128;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int K = (2 * radius + 1) * (2 * radius + 1);
  if (dtype < 0 || dtype > 2) return false;
  if (B <= 0 || HW <= 0) return true;
  const dim3 grid(static_cast<unsigned>((HW + kThreads - 1) / kThreads),
                  static_cast<unsigned>(K), static_cast<unsigned>(B));
  if (dtype == 0) {
    launch_typed<float>(f_a, sa, f_b, sb, warp, out, grid, kThreads, C, H, W, Hb, Wb, radius,
                        stream);
  } else if (dtype == 1) {
    launch_typed<__half>(f_a, sa, f_b, sb, warp, out, grid, kThreads, C, H, W, Hb, Wb, radius,
                         stream);
  } else {
    launch_typed<__nv_bfloat16>(f_a, sa, f_b, sb, warp, out, grid, kThreads, C, H, W, Hb, Wb,
                                radius, stream);
  }
  return true;
}

}  // namespace romav2_local_corr
