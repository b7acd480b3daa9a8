package layers

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"runtime"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// Compression names a layer compression.
type Compression string

// Supported compressions.
const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "uncompressed"
)

// ParseCompression maps a --compression flag value to a Compression. The
// empty string means Gzip.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case "":
		return Gzip, nil
	case Gzip, Zstd, Uncompressed:
		return c, nil
	}
	return "", fmt.Errorf("unknown compression %q (want gzip, zstd or uncompressed)", s)
}

// LayerOptions control how a layer is written. The zero value writes gzip at
// the library's default level.
type LayerOptions struct {
	Compression Compression // "" means Gzip
	// Level is the compression level: 1 (fastest) to 9 (best) for gzip,
	// 1 to 22 for zstd (mapped onto the encoder's four speed levels as
	// zstd.EncoderLevelFromZstd does). 0 means the compressor's default. It
	// must be 0 for Uncompressed.
	Level int
}

// MediaType is the OCI layer media type of layers written with o.
func (o LayerOptions) MediaType() (types.MediaType, error) {
	c, err := ParseCompression(string(o.Compression))
	if err != nil {
		return "", err
	}
	switch c {
	case Zstd:
		return types.OCILayerZStd, nil
	case Uncompressed:
		return types.OCIUncompressedLayer, nil
	}
	return types.OCILayer, nil
}

// gzipBlockSize is the pgzip block size. pgzip's output depends on it (each
// block is compressed separately, primed with the previous block's tail) but
// not on the number of blocks in flight, so layer digests do not depend on
// the machine's core count.
const gzipBlockSize = 1 << 20

// gzipBlocks is the number of blocks pgzip compresses at once: two per core
// keep every core busy while a block is written out; at most 16, so that
// memory stays bounded (about 3 MiB per block) on large machines.
func gzipBlocks() int {
	return min(2*runtime.GOMAXPROCS(0), 16)
}

// newCompressor wraps w in the compressor that opts select. Closing the
// returned writer flushes the compressed stream; it does not close w.
func newCompressor(w io.Writer, opts LayerOptions) (io.WriteCloser, error) {
	c, err := ParseCompression(string(opts.Compression))
	if err != nil {
		return nil, err
	}
	switch c {
	case Gzip:
		level := pgzip.DefaultCompression
		if opts.Level != 0 {
			if opts.Level < 1 || opts.Level > 9 {
				return nil, fmt.Errorf("gzip level %d out of range 1-9", opts.Level)
			}
			level = opts.Level
		}
		gz, err := pgzip.NewWriterLevel(w, level)
		if err != nil {
			return nil, fmt.Errorf("gzip writer: %w", err)
		}
		if err := gz.SetConcurrency(gzipBlockSize, gzipBlocks()); err != nil {
			return nil, fmt.Errorf("gzip writer: %w", err)
		}
		return gz, nil
	case Zstd:
		level := zstd.SpeedDefault
		if opts.Level != 0 {
			if opts.Level < 1 || opts.Level > 22 {
				return nil, fmt.Errorf("zstd level %d out of range 1-22", opts.Level)
			}
			level = zstd.EncoderLevelFromZstd(opts.Level)
		}
		zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(level))
		if err != nil {
			return nil, fmt.Errorf("zstd writer: %w", err)
		}
		return zw, nil
	default:
		if opts.Level != 0 {
			return nil, fmt.Errorf("compression level %d given for an uncompressed layer", opts.Level)
		}
		return nopWriteCloser{w}, nil
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Decompress returns a reader of the uncompressed bytes of rc, which may be
// gzip, zstd or plain (detected from its first bytes, as layer media types
// are not always truthful). Closing the result closes rc.
func Decompress(rc io.ReadCloser) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(rc, 64<<10)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		rc.Close()
		return nil, fmt.Errorf("reading layer: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		gz, err := pgzip.NewReader(br)
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return &readCloser{Reader: gz, close: func() error {
			gz.Close()
			return rc.Close()
		}}, nil
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return &readCloser{Reader: zr, close: func() error {
			zr.Close()
			return rc.Close()
		}}, nil
	}
	return &readCloser{Reader: br, close: rc.Close}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r *readCloser) Close() error { return r.close() }
