"""Data: label parsing, NIH metadata, image decoding (with a memory bound), the parallel
decoder, and the tf.data input pipeline."""
