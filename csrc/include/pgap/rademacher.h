// The Rademacher stream philox4x32-10-rademacher/v1 (docs/rng.md, "The Rademacher stream"),
// shared by the host and CUDA builds.
//
// rho(seed, key, i) in {+1, -1}: element i is bit i % 32 of word (i / 32) % 4 of Philox block
// b = i / 128, with counter (b mod 2^32, b >> 32, key, 2) and Philox key (seed mod 2^32,
// seed >> 32); a 0 bit is +1, a 1 bit is -1. Counter word c3 = 2 is the Rademacher domain (the
// Gaussian stream uses c3 = 0, the rounding words c3 = 1), so no word is shared with them.
//
// One block serves 128 consecutive elements: element 128*b + 32*q + k is bit k of word q. A term
// coeff * rho is coeff with its sign bit flipped when the bit is 1: exact, so sums of terms in
// the same order give the same bits on every backend.
#pragma once
#include <cstdint>

#include "pgap/macros.h"
#include "pgap/normal.h"
#include "pgap/philox.h"

namespace pgap {

constexpr uint32_t kRademacherDomain = 2u;          // Philox counter word c3 of the signs
constexpr int64_t kRademacherBlockElements = 128;   // elements per Philox block (4 words x 32 bits)

// The four words of Rademacher block b (elements 128*b .. 128*b + 127).
PGAP_HD Words4 rademacher_block_words(uint64_t seed, uint32_t key, uint64_t block) {
  return block_words(seed, key, kRademacherDomain, block);
}

// Where element i lies: block i / 128, word (i / 32) % 4, bit i % 32.
PGAP_HD uint64_t rademacher_block(uint64_t i) { return i >> 7; }
PGAP_HD uint32_t rademacher_word(uint64_t i) { return static_cast<uint32_t>(i >> 5) & 3u; }
PGAP_HD uint32_t rademacher_bit(uint64_t i) { return static_cast<uint32_t>(i) & 31u; }

// The float32 sign mask of bit `bit` of word x: 0 for +1, 0x80000000 for -1.
PGAP_HD uint32_t rademacher_sign(uint32_t x, uint32_t bit) { return ((x >> bit) & 1u) << 31; }

// coeff * rho for the sign mask of rho: exact (a sign flip, as coeff * -1.0f).
PGAP_HD float rademacher_term(float coeff, uint32_t sign) {
  return bits_to_float(float_to_bits(coeff) ^ sign);
}

// rho(seed, key, i) as +1.0f or -1.0f: one Philox call per element (for checks; the kernels draw
// a block once for its 128 elements).
PGAP_HD float rademacher_value(uint64_t seed, uint32_t key, uint64_t i) {
  const Words4 w = rademacher_block_words(seed, key, rademacher_block(i));
  return rademacher_term(1.0f, rademacher_sign(word_of_lane(w, rademacher_word(i)), rademacher_bit(i)));
}

// The warp schedule of the CUDA kernel (csrc/cuda/perturb.cu), kept here so that the CPU tests
// run the same index math (the `_C.rademacher_warp_terms` binding replays it on the host).
//
// A warp covers kRademacherWarpBlocks = 8 consecutive blocks (1024 elements). For block r of
// them, lane l (0..31) handles the four elements 4*l .. 4*l + 3 of the block, which are bits
// 4*(l % 8) + k, k = 0..3, of word l / 8: the warp's loads and stores are contiguous. Each lane
// draws one block per seed, block l % 8 of the warp, and keeps only its word l / 8; in step r
// lane l reads that word of block r from lane r + 8*(l / 8), which drew block r and kept word
// l / 8. So the 8 blocks cost one Philox call per lane, and one shuffle per lane and block.
constexpr uint32_t kRademacherWarpBlocks = 8;

PGAP_HD uint32_t rademacher_lane_block(uint32_t lane) { return lane & 7u; }  // the block it draws
PGAP_HD uint32_t rademacher_lane_word(uint32_t lane) { return lane >> 3; }   // the word it keeps
// The lane holding, in step r, the word that lane `lane` needs.
PGAP_HD uint32_t rademacher_source_lane(uint32_t lane, uint32_t r) { return r + (lane & ~7u); }

// The terms coeff * rho of lane `lane`'s four elements 4*lane + k of a block whose word
// lane / 8 is x.
PGAP_HD void rademacher_lane_terms(float coeff, uint32_t x, uint32_t lane, float (&term)[4]) {
  const uint32_t bit0 = 4u * (lane & 7u);
  for (uint32_t k = 0; k < 4; ++k) term[k] = rademacher_term(coeff, rademacher_sign(x, bit0 + k));
}

}  // namespace pgap
