/*
 * CRC-32C (Castagnoli), the checksum every stored page carries. Uses the SSE4.2 crc32
 * instruction when the CPU has it and a table-driven portable version otherwise; both give the
 * same value (tests check them against each other and the standard check value).
 * Chaining: crc32c(crc32c(0, a, n), b, m) == crc32c(0, a||b, n+m).
 */
#ifndef ICE_TIERS_CRC32C_H
#define ICE_TIERS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *buf, size_t len);
/* The two implementations, for tests and benchmarks. crc32c_hw falls back to the portable
 * code on CPUs without the instruction only where it cannot be compiled (non-x86): call it only
 * when crc32c_have_hw() is true. */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len);
int crc32c_have_hw(void);

#endif
