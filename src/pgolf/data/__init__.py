"""Token shards: the challenge's binary format, preparation from text, download and verification."""
