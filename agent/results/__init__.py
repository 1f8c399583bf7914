"""Results of executions (docs/protocol.md, Results): packing and publishing, the edge behind Publish.

The lifecycle core decides when to publish and what to make of the outcome; this package does the I/O:
:mod:`pack` (the deterministic archive), :mod:`local` and :mod:`s3` (the publishers), and
:mod:`publishers` (what this node can serve, and one try at publishing, off the event loop).
"""
