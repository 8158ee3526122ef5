"""Which PNG files are accepted: the chunk and zlib rules that prepare and predict (PIL) share
with the SavedModel (libpng, inside `tf.io.decode_png`), decided once.

PIL and libpng disagree on damaged files: PIL refuses an ancillary chunk (tEXt, gAMA) whose
CRC is wrong, and accepts a wrong CRC on IDAT, an unknown critical chunk, a palette image
without PLTE or pixel data whose zlib stream stops before its checksum; libpng does the
opposite in each case. The PNG standard (ISO/IEC 15948, 5.4 and 14.2) sides with libpng, and
libpng is what serves, so the rules are libpng's, and this walk applies them before PIL sees
the file:

  * a chunk type is four ASCII letters; a critical chunk (upper-case first letter) with a
    wrong CRC, or one other than IHDR, PLTE, IDAT and IEND, refuses the file;
  * IHDR comes once and first, PLTE at most once and before IDAT (required for a palette
    image), the IDAT chunks one after another, IEND last (bytes after it are ignored);
  * ancillary chunks never decide: one with a wrong CRC is ignored, and PIL is given the file
    without its ancillary chunks, so their content cannot make it refuse what libpng takes.
    sBIT (the bit depth of 16-bit gray, `images._scale_16bit`) is read only before IDAT,
    with 1 to 4 bytes (the standard's lengths) and a right CRC;
  * the zlib stream holds the image's rows and ends, with its Adler-32 checksum, within the
    IDAT data; a wrong checksum right after the rows refuses the file. Data the stream holds
    past the rows is inflated only to find the stream's end, and a fault in it is ignored, as
    libpng ignores it.

The SavedModel checks the headers first (`cxr_tf.serving.header_checks`, which reads sBIT
with the same CRC rule) and leaves the rest to libpng. Struct and zlib only.
"""

import struct
import typing
import zlib

from cxr_tf.data.image_header import PNG_COLOUR, PNG_SIGNATURE, ImageError

CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
_PALETTE = 3  # IHDR colour type of a palette image
# Adam7 interlacing: (first column, first row, column step, row step) of each pass.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_SLICE = 1 << 22  # bytes inflated at a time: memory stays bounded whatever the stream says


class Chunks(typing.NamedTuple):
    """What `walk` found: sBIT's value (None without a valid one before IDAT), the IDAT
    chunks' data, and the file as PIL must read it (the critical chunks only)."""

    sbit: int | None
    idat: list
    critical_only: bytes


def walk(name, data):
    """Walks the chunks of PNG `data` (IHDR already checked) by the rules above: returns
    `Chunks`, or raises ImageError naming the chunk and the reason.

    PIL decodes lazily and may accept a file that ends early, so truncation is found here,
    from the chunk lengths, with the byte counts a user can compare against the file on disk.
    """
    pos, sbit, idat, kept, seen, dropped = 8, None, [], [PNG_SIGNATURE], [], False
    view = memoryview(data)
    while True:
        length, kind, end = _next_chunk(name, data, pos)
        crc_ok = zlib.crc32(view[pos + 4:end - 4]) == struct.unpack(">I", data[end - 4:end])[0]
        if kind in CRITICAL or _is_critical(kind):
            _check_critical(name, kind, crc_ok, seen, colour=data[25])
            kept.append(view[pos:end])
        else:
            dropped = True
            if kind == b"sBIT" and crc_ok and 1 <= length <= 4 and sbit is None \
                    and b"IDAT" not in seen:
                sbit = data[pos + 8]
        if kind == b"IDAT":
            idat.append(view[pos + 8:end - 4])
        elif kind == b"IEND":
            if not idat:
                raise ImageError(name, "undecodable", "PNG has no IDAT chunk (no pixel data)")
            break
        seen.append(kind)
        pos = end
    return Chunks(sbit, idat, b"".join(kept) if dropped else data)


def _next_chunk(name, data, pos):
    """(length, type, end) of the chunk at `pos`; ImageError when the file ends first or the
    type is not four letters."""
    if pos + 8 > len(data):
        raise ImageError(name, "undecodable",
                         f"PNG truncated (read {len(data):,} bytes, no IEND chunk)")
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    end = pos + 12 + length
    if end > len(data):
        raise ImageError(name, "undecodable",
                         f"PNG truncated (read {len(data):,} of at least {end:,} bytes)")
    if not kind.isalpha():  # bytes.isalpha: ASCII letters only
        raise ImageError(name, "undecodable", f"PNG chunk type {kind.hex(' ')} at byte {pos:,} "
                         "is not four letters (corrupt file)")
    return length, kind, end


def _is_critical(kind):
    return not kind[0] & 0x20  # bit 5 of the first byte clear: an upper-case letter


def _check_critical(name, kind, crc_ok, seen, colour):
    """The rules for a critical chunk, given the chunk types `seen` before it."""
    text = kind.decode("ascii")
    if kind not in CRITICAL:
        raise ImageError(name, "undecodable", f"PNG has an unknown critical chunk {text} (a "
                         "decoder must not guess what it means)")
    if not crc_ok:
        raise ImageError(name, "undecodable", f"PNG {text} chunk corrupt (CRC mismatch)")
    if kind == b"IHDR" and seen:
        raise ImageError(name, "undecodable", "PNG has a second IHDR chunk")
    if kind == b"PLTE" and (b"PLTE" in seen or b"IDAT" in seen):
        where = "a second PLTE chunk" if b"PLTE" in seen else "a PLTE chunk after IDAT"
        raise ImageError(name, "undecodable", f"PNG has {where}")
    if kind == b"IDAT" and b"IDAT" in seen and seen[-1] != b"IDAT":
        raise ImageError(name, "undecodable", f"PNG IDAT chunks are not consecutive (a "
                         f"{seen[-1].decode('ascii')} chunk between them)")
    if kind == b"IDAT" and colour == _PALETTE and b"PLTE" not in seen:
        raise ImageError(name, "undecodable", "PNG palette image without a PLTE chunk")


def raw_size(width, height, depth, colour, interlace):
    """Bytes the IDAT stream must inflate to: filter byte + packed samples, row by row, for
    the whole image or for each of the seven Adam7 passes."""
    bits = depth * PNG_COLOUR[colour][0]
    passes = [(width, height)] if not interlace else [
        ((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7]
    return sum(rows * (1 + (cols * bits + 7) // 8) for cols, rows in passes if cols and rows)


def check_pixel_data(name, idat, expected):
    """Refuses pixel data that ends early (PIL would fill the missing rows with black and put a
    mostly black film into the training set), is corrupt, or whose zlib stream breaks the rule
    above. Inflated in slices and discarded (bounded memory, ~1 ms per 1024² film).

    The deflate data is inflated raw and the Adler-32 checked here, so that a wrong checksum
    can be told apart from data past the rows, as libpng tells them apart.
    """
    data = _Inflating(name, idat)
    rows = data.inflate(expected)
    if rows < expected:
        raise ImageError(name, "undecodable", f"PNG pixel data ends early (inflates to "
                         f"{rows:,} of {expected:,} bytes)")
    past_rows = data.inflate(None)
    if data.fault_past_rows:
        return  # libpng stops reading there and keeps the image
    trailer = data.trailer()
    if len(trailer) < 4:
        raise ImageError(name, "undecodable", "PNG pixel data does not end (its zlib stream "
                         "stops before its checksum)")
    if not past_rows and struct.unpack(">I", trailer[:4])[0] != data.adler:
        raise ImageError(name, "undecodable", "PNG pixel data corrupt (zlib checksum "
                         "mismatch)")


class _Inflating:
    """A PNG's zlib stream, inflated raw (no checksum) in slices, its Adler-32 kept."""

    def __init__(self, name, idat):
        self.name, self.parts = name, [p for p in idat if len(p)]
        _check_zlib_header(name, b"".join(self.parts[:2])[:2])
        self._skip(2)
        self.inflater, self.adler = zlib.decompressobj(-zlib.MAX_WBITS), 1
        self.fault_past_rows = False

    def _skip(self, count):
        while count and self.parts:
            taken = min(count, len(self.parts[0]))
            self.parts[0], count = self.parts[0][taken:], count - taken
            if not self.parts[0]:
                self.parts.pop(0)

    def inflate(self, limit):
        """Inflates up to `limit` bytes (None: to the stream's end); returns how many. A fault
        in the data is an error only while limit is set (the rows)."""
        total = 0
        while self.parts and not self.inflater.eof and (limit is None or total < limit):
            want = _SLICE if limit is None else min(limit - total, _SLICE)
            try:
                out = self.inflater.decompress(self.parts[0], want)
            except zlib.error as e:
                if limit is None:  # past the rows
                    self.fault_past_rows = True
                    return total
                raise ImageError(self.name, "undecodable", f"PNG pixel data corrupt ({e})") \
                    from e
            self.adler, total = zlib.adler32(out, self.adler), total + len(out)
            self.parts[0] = self.inflater.unconsumed_tail
            if not self.parts[0]:
                self.parts.pop(0)
        return total

    def trailer(self):
        """The bytes after the deflate data (the checksum first), once it ended; b"" if not."""
        if not self.inflater.eof:
            return b""
        return self.inflater.unused_data + b"".join(self.parts)


def _check_zlib_header(name, head):
    """RFC 1950's two header bytes: deflate with a window of at most 32 KB, a valid check and
    no preset dictionary (PNG allows none)."""
    if len(head) < 2 or head[0] & 0x0F != 8 or head[0] >> 4 > 7 or \
            (head[0] << 8 | head[1]) % 31 or head[1] & 0x20:
        raise ImageError(name, "undecodable", f"PNG pixel data corrupt (zlib header "
                         f"{head.hex(' ') or 'missing'})")
