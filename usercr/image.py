"""Sequential image streams: a writer and a reader that carry the checksum."""
import os
import time

from . import records as R
from .errors import UcrError
from .native import ffi, lib

BUF_LIMIT = 1 << 16


class ImageWriter:
    """compress: the stream goes out as zstd (compress.Output)."""

    def __init__(self, fd, compress=False):
        self.fd = fd
        self.z = None
        if compress:
            from .compress import Output
            self.z = Output(fd)
        self.csum = ffi.new("uint64_t[2]")
        self.buf = bytearray()
        self.offset = 0
        self.pages_scanned = self.pages_written = 0  # for --stats

    def add(self, data):
        self.buf += data
        if len(self.buf) >= BUF_LIMIT:
            self.flush()

    def flush(self):
        if not self.buf:
            return
        lib.ucr_csum_update(self.csum, ffi.from_buffer(self.buf), len(self.buf))
        self._write(self.buf)
        self.buf = bytearray()

    def _write(self, data):
        if self.z:
            self.z.write(data)
            self.offset += len(data)
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as e:
                raise UcrError(f"writing the image: {e.strerror}") from None
            view = view[n:]
            self.offset += n

    def pages(self, pid, pagemap_fd, mem_fd, ranges, page_size, base=None):
        """Hands the page copy to the C core, which writes PAGES records (and,
        with a base, PAGES_PARENT records: usercr/incremental.py)."""
        self.flush()
        arr = ffi.new("struct ucr_dump_range[]", len(ranges))
        for i, (start, end, mode) in enumerate(ranges):
            arr[i].start, arr[i].end, arr[i].mode = start, end, mode
        counts = ffi.new("uint64_t[2]")
        z = self.z.handle if self.z else ffi.NULL
        r = lib.ucr_dump_pages_base(pid, pagemap_fd, mem_fd, self.fd, z, arr, len(ranges), self.csum, page_size,
                                    counts, base[0] if base else ffi.NULL)
        self.offset += counts[0]
        self.pages_written += counts[1]
        self.pages_scanned += sum(end - start for start, end, _ in ranges) // page_size
        if r < 0:
            raise UcrError(f"copying memory of process {pid}: {os.strerror(-r)}")

    def finish(self):
        self.flush()
        self._write(R.TAIL.pack(magic=R.TAIL_MAGIC, csum_a=self.csum[0], csum_b=self.csum[1]))
        if self.z:
            self.z.write(b"", end=True)

    def close(self):
        if self.z:
            self.z.close()


def header_record(arch_id, page_size):
    u = os.uname()
    return R.HEADER.pack(magic=R.HEADER_MAGIC, version=R.FORMAT_VERSION, arch_id=arch_id,
                         page_size=page_size, time=int(time.time()), release=u.release[:71],
                         kversion=u.version[:71], machine=u.machine[:71])


class Record:
    __slots__ = ("offset", "type", "length", "spec", "fields")

    def __init__(self, offset, type_, length, spec, fields):
        self.offset, self.type, self.length, self.spec, self.fields = offset, type_, length, spec, fields

    @property
    def name(self):
        return self.spec.name if self.spec else f"UNKNOWN({self.type})"

    def __getitem__(self, key):
        return self.fields[key]


class ImageReader:
    """Reads records one by one, with exact reads, so that the rest of the
    stream can be handed to the restorer at a record boundary."""

    MAX_RECORD = 1 << 26

    def __init__(self, fd, prefix=b""):
        self.fd = fd
        self.csum = ffi.new("uint64_t[2]")
        self.offset = 0
        self.prefix = prefix  # the stream's first bytes, already read from fd

    def _read(self, n, what):
        chunks = [self.prefix[:n]]
        self.prefix = self.prefix[n:]
        left = n - len(chunks[0])
        while left:
            try:
                data = os.read(self.fd, min(left, 1 << 20))
            except OSError as e:
                raise UcrError(f"reading the image at offset {self.offset}: {e.strerror}") from None
            if not data:
                raise UcrError(f"image truncated at offset {self.offset + n - left}: {what} incomplete")
            chunks.append(data)
            left -= len(data)
        return b"".join(chunks)

    def _sum(self, data):
        lib.ucr_csum_update(self.csum, ffi.from_buffer(data), len(data))

    def next(self, skip_data=False):
        """The next record; with skip_data, a PAGES payload is read and summed but not kept."""
        at = self.offset
        self.csum_before = (self.csum[0], self.csum[1])
        hdr = self._read(R.RECORD_HDR.size, "record header")
        type_, length = R.RECORD_HDR.unpack(hdr)
        spec = R.REGISTRY.get(type_)
        if spec is None:
            raise UcrError(f"image corrupt at offset {at}: unknown record type {type_}")
        if length < spec.fixed_len or (length > self.MAX_RECORD and type_ != R.PAGES.type):
            raise UcrError(f"image corrupt at offset {at}: {spec.name} record has bad length {length}")
        padded = R.align(length)
        if type_ == R.TAIL.type:
            body = self._read(padded - R.RECORD_HDR.size, "TAIL record")
            self.offset += padded
            fields = spec.unpack(body[:length - R.RECORD_HDR.size])
            if fields["magic"] != R.TAIL_MAGIC:
                raise UcrError(f"image corrupt at offset {at}: bad tail magic")
            if (fields["csum_a"], fields["csum_b"]) != (self.csum[0], self.csum[1]):
                raise UcrError("image corrupt: checksum mismatch (a byte of the image changed)")
            return Record(at, type_, length, spec, fields)
        self._sum(hdr)
        if type_ == R.PAGES.type and skip_data:
            fixed = self._read(spec.struct.size, "PAGES record")
            self._sum(fixed)
            left = padded - spec.fixed_len
            while left:
                chunk = self._read(min(left, 1 << 20), "PAGES record")
                self._sum(chunk)
                left -= len(chunk)
            self.offset += padded
            return Record(at, type_, length, spec, spec.unpack(fixed))
        body = self._read(padded - R.RECORD_HDR.size, f"{spec.name} record")
        self._sum(body)
        self.offset += padded
        try:
            fields = spec.unpack(body[:length - R.RECORD_HDR.size])
        except (ValueError, UnicodeDecodeError) as e:
            raise UcrError(f"image corrupt at offset {at}: {e}") from None
        return Record(at, type_, length, spec, fields)

    def header(self):
        """Reads and checks the HEADER record."""
        try:
            rec = self.next()
        except UcrError as e:
            if self.offset == 0:
                raise UcrError(f"not a usercr image ({e})") from None
            raise
        if rec.type != R.HEADER.type or rec["magic"] != R.HEADER_MAGIC:
            raise UcrError("not a usercr image: bad magic at offset 0")
        if rec["version"] != R.FORMAT_VERSION:
            raise UcrError(f"image format version {rec['version']} is not supported (this is {R.FORMAT_VERSION})")
        return rec

    def expect(self, spec):
        rec = self.next()
        if rec.type != spec.type:
            raise UcrError(f"image corrupt at offset {rec.offset}: expected {spec.name}, found {rec.name}")
        return rec
