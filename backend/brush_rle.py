"""Label Studio's brush RLE, encoded with whole-array numpy operations.

The bytes are exactly those of ``label_studio_sdk.converter.brush.mask2rle`` (which builds a
Python string of bits run by run: about 7 ms for a 1 MP mask, 58 ms at 12 MP), for masks
whose RGBA pixels are the mask value repeated 4 times. The format: a 32-bit count of bytes
(4 per pixel), the word size minus 1 in 5 bits, the 4 run-length field widths minus 1 in 4 bits
each (3, 4, 8, 16), then one token per run of equal bytes, ``1, width index (2 bits), run length
minus 1, value (8 bits)``, runs longer than 2**16 split into 2**16-byte tokens; zero bits pad the
end to a whole byte (a full zero byte when already whole, as the SDK does).
"""
from __future__ import annotations

import numpy as np

_WIDTHS = np.array([3, 4, 8, 16])
_HEADER_WIDTHS = (32, 5, 4, 4, 4, 4)
_MAX_RUN = 2 ** 16


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The big-endian bits of each value in its own width, concatenated (uint8 0/1)."""
    values, widths = np.asarray(values, np.int64), np.asarray(widths, np.int64)
    positions = np.arange(int(widths.max()) - 1, -1, -1)
    bits = (values[:, None] >> positions) & 1
    return bits[positions < widths[:, None]].astype(np.uint8)


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths in bytes, values) of the runs of the RGBA stream of ``flat``, runs over 2**16
    bytes split as the SDK splits them (full 2**16 chunks first, the rest last)."""
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size]) * 4
    values = flat[starts]
    chunks = np.maximum(1, -(-lengths // _MAX_RUN))  # tokens per run
    token_values = np.repeat(values, chunks)
    token_lengths = np.full(int(chunks.sum()), _MAX_RUN, np.int64)
    last = np.cumsum(chunks) - 1
    token_lengths[last] = lengths - (chunks - 1) * _MAX_RUN
    return token_lengths, token_values


def encode(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE bytes of a non-empty HxW mask (bool: True -> 255; or uint8 values)."""
    flat = (mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)).ravel()
    header = _bits(np.array([flat.size * 4, 7, *(_WIDTHS - 1)]), np.array(_HEADER_WIDTHS))
    lengths, values = _runs(flat)
    index = np.searchsorted(_WIDTHS, np.ceil(np.log2(lengths)).astype(np.int64))  # smallest field holding length - 1
    widths = _WIDTHS[index]
    codes = (((4 | index) << widths | (lengths - 1)) << 8) | values
    tokens = _bits(codes, 3 + widths + 8)
    stream = np.concatenate([header, tokens])
    stream = np.concatenate([stream, np.zeros(8 - stream.size % 8, np.uint8)])
    return np.packbits(stream).tolist()
