"""ThumbHash decoding for tests: the reference decoder (`thumbHashToRGBA`), so a test can look at
what a hash the worker wrote would show (its colours, its aspect ratio). api/static/thumbhash.js is
the same algorithm for the browser."""

from __future__ import annotations

import base64
import math

from PIL import Image


def aspect_ratio(hash_bytes: bytes) -> float:
    """Width over height, as the hash records it (coarsely: its count of cosine terms a side)."""
    has_alpha, landscape = hash_bytes[2] & 0x80, hash_bytes[4] & 0x80
    lx = (5 if has_alpha else 7) if landscape else hash_bytes[3] & 7
    ly = hash_bytes[3] & 7 if landscape else (5 if has_alpha else 7)
    return lx / ly


def decode(text: str) -> Image.Image:
    """The RGBA picture a base64 ThumbHash stands for, its long side 32 pixels."""
    h_ = base64.b64decode(text)
    header24 = h_[0] | (h_[1] << 8) | (h_[2] << 16)
    header16 = h_[3] | (h_[4] << 8)
    l_dc = (header24 & 63) / 63
    p_dc = ((header24 >> 6) & 63) / 31.5 - 1
    q_dc = ((header24 >> 12) & 63) / 31.5 - 1
    l_scale = ((header24 >> 18) & 31) / 31
    has_alpha = header24 >> 23
    p_scale = ((header16 >> 3) & 63) / 63
    q_scale = ((header16 >> 9) & 63) / 63
    landscape = header16 >> 15
    lx = max(3, (5 if has_alpha else 7) if landscape else header16 & 7)
    ly = max(3, header16 & 7 if landscape else (5 if has_alpha else 7))
    a_dc = (h_[5] & 15) / 15 if has_alpha else 1.0
    a_scale = (h_[5] >> 4) / 15
    start = 6 if has_alpha else 5
    index = 0

    def channel(nx: int, ny: int, scale: float) -> list[float]:
        nonlocal index
        ac = []
        for cy in range(ny):
            cx = 0 if cy else 1
            while cx * ny < nx * (ny - cy):
                nibble = (h_[start + (index >> 1)] >> ((index & 1) << 2)) & 15
                index += 1
                ac.append((nibble / 7.5 - 1) * scale)
                cx += 1
        return ac

    l_ac = channel(lx, ly, l_scale)
    p_ac = channel(3, 3, p_scale * 1.25)
    q_ac = channel(3, 3, q_scale * 1.25)
    a_ac = channel(5, 5, a_scale) if has_alpha else []
    ratio = aspect_ratio(h_)
    w = round(32 if ratio > 1 else 32 * ratio)
    h = round(32 / ratio if ratio > 1 else 32)
    pixels = bytearray()
    for y in range(h):
        for x in range(w):
            fx = [math.cos(math.pi / w * (x + 0.5) * cx) for cx in range(max(lx, 5 if has_alpha else 3))]
            fy = [math.cos(math.pi / h * (y + 0.5) * cy) for cy in range(max(ly, 5 if has_alpha else 3))]
            lum, p, q, a = l_dc, p_dc, q_dc, a_dc
            j = 0
            for cy in range(ly):
                cx = 0 if cy else 1
                while cx * ly < lx * (ly - cy):
                    lum += l_ac[j] * fx[cx] * fy[cy] * 2
                    j, cx = j + 1, cx + 1
            j = 0
            for cy in range(3):
                for cx in range(0 if cy else 1, 3 - cy):
                    f = fx[cx] * fy[cy] * 2
                    p, q, j = p + p_ac[j] * f, q + q_ac[j] * f, j + 1
            if has_alpha:
                j = 0
                for cy in range(5):
                    for cx in range(0 if cy else 1, 5 - cy):
                        a, j = a + a_ac[j] * fx[cx] * fy[cy] * 2, j + 1
            b = lum - 2 / 3 * p
            r = (3 * lum - b + q) / 2
            g = r - q
            pixels += bytes(int(max(0.0, 255 * min(1.0, v))) for v in (r, g, b, a))
    return Image.frombytes("RGBA", (w, h), bytes(pixels))
