"""TFDS dataset builders. Import a dataset's package to register it."""
