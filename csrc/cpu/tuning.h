// Tuning constants of the CPU kernels, in one place, each with the benchmark that chose it.
#pragma once
#include <cstdint>

namespace pws::cpu {

// Values per unit of parallel work and per entry of the merge sequence. Fixed (not derived from
// the thread count) so that results are bit-identical for any number of threads.
// bench/bench_stats.py (describe, 1e8 float32): 2^16 and 2^18 within noise; 2^16 keeps the
// per-chunk state array small (16 k states for 1e9 values).
constexpr int64_t kChunk = int64_t(1) << 16;

// Values per group whose shift is its own mean; the group is read twice from L1/L2.
// 4096 float32 values = 16 KiB, half of a 32 KiB L1d with room for the gather buffer.
constexpr int64_t kSub = 4096;

// Accumulator lanes (one 512-bit register of float32) and values per lane summed in the input
// precision before each add into float64: 8 float32 additions keep the relative error of each
// partial sum under 8 * 2^-24 = 4.8e-7, well inside the 1e-5 variance bound.
constexpr int kLanes = 16;
constexpr int kFlush = 8;

// Interleaved copies of a uniform histogram's counters, so that runs of equal bins (peaked weight
// distributions) do not serialise on one counter. bench/bench_stats.py, describe + 256 bins.
constexpr int kUniformCopies = 4;

// Tensors with at least this many values are split across threads; smaller ones go one per thread.
constexpr int64_t kParallelMinValues = 4 * kChunk;

// A call whose inputs hold fewer values than this in total runs single-threaded. bench_train.py's
// tracker overhead (MNIST CNN, 50 k parameters, every=1, 2 torch threads): waking the OpenMP
// team per record made a tracked step 29 % slower than an untracked one.
constexpr int64_t kParallelMinTotal = int64_t(1) << 20;

}  // namespace pws::cpu
