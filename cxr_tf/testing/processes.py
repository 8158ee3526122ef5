"""What tests that start processes share: free local ports for a cluster's workers, and the
preamble of a `python -c` script that must run without cxr_tf (as TF Serving would)."""

import socket


def free_ports(n):
    """`n` distinct local ports that were free a moment ago (bound, read, released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# Prepended to a script: from here on, importing cxr_tf raises ImportError, so the script
# proves it needs only TensorFlow (and what it imports itself).
BLOCK_CXR_TF = r"""
import json, sys

class BlockCxrTf:  # a process that has TensorFlow but cannot import cxr_tf
    def find_spec(self, name, path=None, target=None):
        if name == "cxr_tf" or name.startswith("cxr_tf."):
            raise ImportError(f"{name} is blocked in this process")

sys.meta_path.insert(0, BlockCxrTf())
"""
