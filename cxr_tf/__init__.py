"""cxr_tf: multi-label chest X-ray classification on NIH ChestX-ray14 (Keras 3 / TensorFlow 2).

This file imports nothing heavy on purpose: `import cxr_tf.model` must work on a machine that
has only Keras and JAX (the GPU benchmark host), so TensorFlow is imported by the modules that
need it, never here.
"""

__version__ = "0.2.0"
