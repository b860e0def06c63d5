"""imgfs on-disk format: blob (tar+zstd of independent frames) and bootstrap writer and reader.

Pure and synchronous: bytes in, bytes out. Spec: docs/format.md. Public modules: constants,
layer (convert_layer), footer (parse_footer), bootstrap (Bootstrap), chunk (decode_chunk),
merge (MergedView).
"""
