/* DD_HD marks the small inline functions that compile as plain C for cpu/ and as
 * __host__ __device__ under nvcc, so both backends share one copy of each per-element formula. */
#ifndef DIFFUSION_HD_H
#define DIFFUSION_HD_H
#ifdef __CUDACC__
#define DD_HD __host__ __device__
#else
#define DD_HD
#endif
#endif
