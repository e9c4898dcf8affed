"""Texts to vectors: model resolution, the Encoder, pooling, precision, backends, fingerprints."""
