"""Builders of test inputs that the tests and the tools share, so each exists once: encoded
image bytes of every kind the decoders meet, well formed or hostile (`image_bytes`).

The layer just below the apps: it may import any library module and never an app or a tool.
Nothing here is imported by the library itself.
"""
