"""HEIC/HEIF decoding for the worker, through pi-heif (libheif with the libde265 HEVC decoder).

pi-heif is the decode-only build of pillow-heif: its codecs are LGPL (libheif, libde265), where
pillow-heif also bundles the GPL x265 encoder, which the service never needs. Only the worker image
has it: the API identifies HEIF files from their boxes (core.heif_structure) and never decodes one.
"""

from __future__ import annotations

import functools

import pi_heif


@functools.cache
def enable_heif() -> None:
    """Register pi-heif's Pillow plugin, once per process (a render pool's child too), on first use.

    Thumbnails, depth maps and auxiliary images (an iPhone's gain map) are not read: the service
    renders the primary picture only. libheif decodes tiles on one thread: the worker already runs
    one render per core, and per-core time is what BENCHMARKS.md measures.
    """
    pi_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)
