package layers

// NewCompressor exposes the layer compressor to the benchmarks, so that
// they measure the library with exactly WriteLayer's settings.
var NewCompressor = newCompressor
