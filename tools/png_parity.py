"""Do prepare/predict (PIL) and the SavedModel (libpng) accept and refuse the same damaged PNGs?

    python tools/png_parity.py [--mutants=100] [--seed=0]

Takes six valid PNGs (8-bit gray, 16-bit gray with sBIT, palette, RGBA, gray with a tEXt
chunk, a 256² film written at compression level 9), and makes `--mutants` damaged copies of
each: one byte changed at a random place (any byte of the file: chunk lengths, types, data,
CRCs, the zlib stream). Each copy goes through `cxr_tf.data.images.decode_any` (what prepare
and predict run) and through `cxr_tf.serving.graph.decode_gray` (the SavedModel's
preprocessing, whose decoder is libpng). The two must agree on accepting or refusing, and on
the pixels when both accept (the rules: `cxr_tf.data.png_chunks`).

Prints one JSON line: mutants, accepted, refused, disagreements (and the first few, with
both outcomes). docs/RELIABILITY.md records a run; tests/test_hostile.py runs the cases the
rules were decided on.
"""

import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr_tf.testing import image_bytes  # noqa: E402


def bases():
    """{name: valid PNG bytes} covering the decoders' branches."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (24, 40), np.uint8)
    film = np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8)
    from PIL import Image

    return {
        "gray8": image_bytes.png(gray),
        "gray16_sbit": image_bytes.insert_after_ihdr(
            image_bytes.png(rng.integers(0, 4096, (16, 16), np.uint16)), b"sBIT", b"\x0c"),
        "palette": image_bytes.png(Image.fromarray(gray).convert("P")),
        "rgba": image_bytes.png(rng.integers(0, 256, (12, 20, 4), np.uint8)),
        "gray8_text": image_bytes.insert_after_ihdr(image_bytes.png(gray), b"tEXt",
                                                    b"Comment\0chest film"),
        "film256": image_bytes.png(film, compress_level=9),
    }


def mutants(data, count, rng):
    """`count` copies of `data`, each with one byte changed (never to itself). Every other
    copy has its chunk's CRC made right again, so that the damage reaches the checks behind
    the CRC (IHDR values, the palette, the zlib stream) as a bug in a writer would."""
    for i in range(count):
        at = int(rng.integers(8, len(data)))  # past the signature, which decides the format
        value = (data[at] + int(rng.integers(1, 256))) % 256
        mutant = data[:at] + bytes([value]) + data[at + 1:]
        yield at, (_fix_crc(data, mutant, at) if i % 2 else mutant)


def _fix_crc(original, mutant, at):
    """`mutant` with the CRC of the chunk (of `original`'s layout) holding byte `at` redone,
    when `at` lies in that chunk's type or data."""
    pos = 8
    while pos + 8 <= len(original):
        length = struct.unpack(">I", original[pos:pos + 4])[0]
        end = pos + 12 + length
        if pos + 4 <= at < end - 4:
            crc = struct.pack(">I", zlib.crc32(mutant[pos + 4:end - 4]))
            return mutant[:end - 4] + crc + mutant[end:]
        pos = end
    return mutant


def outcomes(data):
    """(PIL path's pixels or its reason, serving graph's pixels or its reason)."""
    import tensorflow as tf

    from cxr_tf.data import image_header, images
    from cxr_tf.serving import graph

    try:
        pil = images.decode_any(data, "x.png")[0]
    except image_header.ImageError as e:
        pil = str(e)
    try:
        served = _serving_decode()(tf.constant(data)).numpy()
    except tf.errors.InvalidArgumentError as e:
        served = e.message.splitlines()[0][-120:]
    return pil, served


_DECODE = []


def _serving_decode():
    """graph.decode_gray as one traced function (traced once, not per call)."""
    if not _DECODE:
        import tensorflow as tf

        from cxr_tf.serving import graph

        _DECODE.append(tf.function(graph.decode_gray,
                                   input_signature=[tf.TensorSpec([], tf.string)]))
    return _DECODE[0]


def agree(pil, served):
    if isinstance(pil, str) or isinstance(served, str):
        return isinstance(pil, str) == isinstance(served, str)
    return pil.shape == served.shape and bool((pil == served).all())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=int, default=100, help="damaged copies per PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    total = accepted = 0
    disagreements = []
    for name, data in bases().items():
        for at, mutant in mutants(data, args.mutants, rng):
            pil, served = outcomes(mutant)
            total += 1
            accepted += not isinstance(pil, str)
            if not agree(pil, served):
                disagreements.append({"png": name, "byte": at, "pil": _shown(pil),
                                      "serving": _shown(served)})
    print(json.dumps({"mutants": total, "accepted": accepted, "refused": total - accepted,
                      "disagreements": len(disagreements), "first": disagreements[:10]}))
    return 1 if disagreements else 0


def _shown(outcome):
    return outcome if isinstance(outcome, str) else f"accepted {outcome.shape}"


if __name__ == "__main__":
    sys.exit(main())
