#!/usr/bin/env python3
"""Prints a new UUIDv7 (RFC 9562): the Idempotency-Key walletd's HTTP API takes for a transfer.

Its first 48 bits are the Unix time in milliseconds, so the key is also a time-ordered transfer id.
Usage: scripts/uuid7.py [COUNT]
"""
import os
import sys
import time


def uuid7() -> str:
    millis = time.time_ns() // 1_000_000
    rand = bytearray(os.urandom(10))
    rand[0] = 0x70 | (rand[0] & 0x0F)  # version 7
    rand[2] = 0x80 | (rand[2] & 0x3F)  # variant 0b10
    hex_text = (millis.to_bytes(6, "big") + bytes(rand)).hex()
    return f"{hex_text[:8]}-{hex_text[8:12]}-{hex_text[12:16]}-{hex_text[16:20]}-{hex_text[20:]}"


if __name__ == "__main__":
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        print(uuid7())
