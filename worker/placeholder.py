"""A task's placeholder, from the picture the worker already decoded: a ThumbHash, the dominant
colour and the oriented size, for pages to show while the outputs are made (pure Pillow: no DB,
NATS or config).

ThumbHash (Evan Wallace's published algorithm, https://evanw.github.io/thumbhash/) rather than
BlurHash: it keeps alpha and the aspect ratio in the hash itself, renders more detail in fewer
bytes (about 25 against BlurHash's 30 or so for 4×3 components) and needs no choice of component
counts. The Python packages of it are pure-Python per-pixel loops, unmaintained since 2023; this
is a compact port of the reference encoder (its bit layout unchanged, so any ThumbHash decoder
reads the result), made cheap by two facts: the picture is first reduced to at most
`HASH_SIDE` pixels a side by Pillow's box reduction (ThumbHash keeps at most 7 cosine terms a side,
which 16 samples carry), and the DCT is linear, so it runs on Pillow's own R, G, B and A
bands and is combined into ThumbHash's L, P, Q afterwards, separably (rows, then columns).
"""

from __future__ import annotations

import base64
import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from operator import add, mul, sub
from typing import TypedDict, TypeVar

from PIL import Image

# Long side of the reduced picture both the hash and the dominant colour are taken from. The
# reference encoder accepts up to 100; ThumbHash keeps at most 7 cosine terms a side (3 cycles),
# which 16 box-averaged samples carry all but unchanged: on a 12 MP photo the hash is the same bytes
# as from 100 px, at a quarter of 32 px's cost (0.3 ms against 0.8; the budget is about 1 ms).
HASH_SIDE = 16
# Colours the dominant colour is chosen among (median cut): few enough that a noisy but mostly
# red picture gives one red, not many near-reds that split its votes.
_DOMINANT_CANDIDATES = 6
# Pixels at least this opaque vote for the dominant colour.
_OPAQUE_ENOUGH = 128


# A band's samples, as Pillow gives them or as mixed in Python.
_Band = TypeVar("_Band", bytes, list[int])


class Placeholder(TypedDict):
    """As stored in the row (`placeholder`, JSONB) and shown by GET /status."""

    thumbhash: str
    dominant_color: str
    width: int
    height: int


def make_placeholder(
    frame: Image.Image,
    width: int,
    height: int,
    *,
    colour: Callable[[Image.Image], Image.Image] | None = None,
) -> Placeholder:
    """The placeholder of a decoded (oriented) frame standing for a `width` × `height` picture:
    `frame` may be smaller (a JPEG decoded at reduced scale) but has the picture's proportions.
    `colour`: the picture's conversion to sRGB (a P3 or CMYK input), applied to the reduced frame,
    which must still be in the frame's own mode for it."""
    small = _reduced(frame, colour)
    return Placeholder(
        thumbhash=base64.b64encode(thumbhash(small)).decode("ascii"),
        dominant_color=dominant_color(small),
        width=width,
        height=height,
    )


def _reduced(frame: Image.Image, colour: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    """`frame` as RGB or RGBA, its long side at most HASH_SIDE: an integer box reduction (cheap
    even on a full 12 MP decode), then a box resize for the last step; `colour` on the result of
    those, in the frame's mode (reduction works on these modes as they are)."""
    if colour is not None and frame.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return _reduced(colour(_shrunk(frame)))
    if frame.mode in ("LA", "PA", "RGBA") or (frame.mode == "P" and frame.has_transparency_data):
        frame = frame.convert("RGBA") if frame.mode != "RGBA" else frame
    elif frame.mode != "RGB":
        frame = frame.convert("RGB")
    return _shrunk(frame)


def _shrunk(frame: Image.Image) -> Image.Image:
    scale = HASH_SIDE / max(frame.size)
    if scale >= 1:
        return frame
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
    factor = int(1 / scale)
    if factor >= 2:
        frame = frame.reduce(factor)
    return frame.resize(size, Image.Resampling.BOX) if size != frame.size else frame


def dominant_color(image: Image.Image) -> str:
    """`#rrggbb` of the commonest colour among the opaque pixels of a small RGB(A) image, after
    median cut to a few colours; the average colour if no pixel is opaque."""
    rgb = image.convert("RGB")
    quantized = rgb.quantize(_DOMINANT_CANDIDATES, method=Image.Quantize.MEDIANCUT)
    indices = quantized.tobytes()
    if image.mode == "RGBA":
        alpha = image.getchannel("A").tobytes()
        votes = Counter(index for index, a in zip(indices, alpha, strict=True) if a >= _OPAQUE_ENOUGH)
    else:
        votes = Counter(indices)
    if not votes:
        red, green, blue = (
            round(sum(band) / len(band)) for band in (rgb.getchannel(i).tobytes() for i in range(3))
        )
        return f"#{red:02x}{green:02x}{blue:02x}"
    palette = quantized.getpalette() or []
    index = votes.most_common(1)[0][0]
    red, green, blue = palette[3 * index : 3 * index + 3]
    return f"#{red:02x}{green:02x}{blue:02x}"


def thumbhash(image: Image.Image) -> bytes:
    """The ThumbHash of an RGB or RGBA image of at most 100 × 100 pixels (the reference encoder's
    `rgbaToThumbHash`, same rounding and bit layout)."""
    w, h = image.size
    if w > 100 or h > 100:
        raise ValueError(f"{w}x{h} does not fit in 100x100")
    count = w * h
    alpha_band = image.getchannel("A").tobytes() if image.mode == "RGBA" else None
    has_alpha = alpha_band is not None and sum(alpha_band) < 255 * count
    l_limit = 5 if has_alpha else 7
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    nx, ny = max(3, lx), max(3, ly)
    # Only the terms the hash keeps are computed: L's triangle, P's and Q's 3 × 3 one (and A's
    # 5 × 5 one), not every band's full rectangle.
    l_terms, pq_terms, a_terms = _triangle(nx, ny), _triangle(3, 3), _triangle(5, 5)
    cos_x = _cosines(w, max(nx, 5))
    cos_y = _cosines(h, max(ny, 5))
    norm = 255 * count

    # The reference composites each pixel atop the average colour, with alpha in 0..1:
    # c' = avg_c * (1 - a) + a * c. Premultiplied bands (RGBa) give a * c, and the DCT is linear,
    # so c'-terms = avg_c * (one-terms - a-terms) + (a * c)-terms, for any mix of the bands too.
    pixels = (image.convert("RGBa") if has_alpha else image).tobytes()
    step = len(image.getbands())
    red, green, blue = (pixels[index::step] for index in range(3))
    # ThumbHash's L, P and Q are fixed mixes of R, G and B: mixed once per pixel (in integers, so
    # exactly), each is transformed alone: 3 bands and only their terms, not R, G and B's all.
    sums = _rows(list(map(add, map(add, red, green), blue)), w)
    p_rows = _rows(list(map(sub, map(add, red, green), map(add, blue, blue))), w)
    q_rows = _rows(list(map(sub, red, green)), w)
    l_dct = _dct(sums, cos_x, cos_y, 3 * norm, l_terms)
    p_dct = _dct(p_rows, cos_x, cos_y, 2 * norm, pq_terms)
    q_dct = _dct(q_rows, cos_x, cos_y, norm, pq_terms)
    alpha_dct: list[float] = []
    if has_alpha and alpha_band is not None:
        alpha_rows = _rows(alpha_band, w)
        alpha_dct = _dct(alpha_rows, cos_x, cos_y, norm, a_terms)
        alpha_at = dict(zip(a_terms, alpha_dct, strict=True))
        alpha_dc = alpha_dct[0]
        # L's triangle lies within A's (l_limit is 5 with alpha); P's and Q's too.
        l_dct, p_dct, q_dct = (
            _composited(terms, positions, alpha_at, alpha_dc)
            for terms, positions in ((l_dct, l_terms), (p_dct, pq_terms), (q_dct, pq_terms))
        )

    l_dc, l_ac, l_scale = _channel(l_dct)
    p_dc, p_ac, p_scale = _channel(p_dct)
    q_dc, q_ac, q_scale = _channel(q_dct)

    landscape = w > h
    header24 = (
        _round(63 * l_dc)
        | (_round(31.5 + 31.5 * p_dc) << 6)
        | (_round(31.5 + 31.5 * q_dc) << 12)
        | (_round(31 * l_scale) << 18)
        | (int(has_alpha) << 23)
    )
    header16 = (
        (ly if landscape else lx)
        | (_round(63 * p_scale) << 3)
        | (_round(63 * q_scale) << 9)
        | (int(landscape) << 15)
    )
    hash_bytes = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8]
    factors = [l_ac, p_ac, q_ac]
    if alpha_dct:
        a_dc, a_ac, a_scale = _channel(alpha_dct)
        hash_bytes.append(_round(15 * a_dc) | (_round(15 * a_scale) << 4))
        factors.append(a_ac)
    start = len(hash_bytes)
    values = [_round(15 * f) for ac in factors for f in ac]
    hash_bytes += [0] * ((len(values) + 1) // 2)
    for index, value in enumerate(values):
        hash_bytes[start + (index >> 1)] |= value << ((index & 1) << 2)
    return bytes(hash_bytes)


@functools.cache
def _triangle(sx: int, sy: int) -> tuple[tuple[int, int], ...]:
    """The (cx, cy) terms a channel of sx × sy keeps, in the hash's order (rows of cy, DC first)."""
    return tuple((cx, cy) for cy in range(sy) for cx in range(sx) if cx * sy < sx * (sy - cy))


def _composited(
    terms: list[float],
    positions: tuple[tuple[int, int], ...],
    alpha_at: dict[tuple[int, int], float],
    alpha_dc: float,
) -> list[float]:
    """A premultiplied band's terms as if composited atop its average colour (see thumbhash)."""
    average = terms[0] / alpha_dc if alpha_dc else 0.0
    return [
        average * ((1.0 if position == (0, 0) else 0.0) - alpha_at[position]) + term
        for term, position in zip(terms, positions, strict=True)
    ]


def _channel(terms: list[float]) -> tuple[float, list[float], float]:
    """A channel's DC, its AC terms scaled into 0..1 and the scale (the reference's encodeChannel)."""
    dc, ac = terms[0], terms[1:]
    scale = max(map(abs, ac), default=0.0)
    if scale:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return dc, ac, scale


def _round(value: float) -> int:
    """JavaScript's Math.round (halves up), as the reference encoder rounds."""
    return math.floor(value + 0.5)


def _rows(data: _Band, width: int) -> list[_Band]:
    return [data[start : start + width] for start in range(0, len(data), width)]


@functools.cache
def _cosines(size: int, terms: int) -> list[list[float]]:
    """cos(π/size · term · (i + ½)) for each term and sample: a few sizes recur (16 a side, and
    the short side of common aspect ratios), so they are made once per process."""
    return [[math.cos(math.pi / size * term * (i + 0.5)) for i in range(size)] for term in range(terms)]


def _dct(
    rows: Sequence[Sequence[int]],
    cos_x: list[list[float]],
    cos_y: list[list[float]],
    norm: int,
    positions: tuple[tuple[int, int], ...],
) -> list[float]:
    """For each (cx, cy) of `positions`: the mean over pixels of value * cos_x[cx][x] *
    cos_y[cy][y] / 255 (`norm` is 255 × the pixel count, times a mix's divisor), rows first, then
    columns, each sum running in C (`map`), not per pixel in Python."""
    by_row = [[sum(map(mul, row, fx)) for row in rows] for fx in cos_x[: 1 + max(cx for cx, _ in positions)]]
    return [sum(map(mul, by_row[cx], cos_y[cy])) / norm for cx, cy in positions]
