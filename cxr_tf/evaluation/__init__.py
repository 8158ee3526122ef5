"""Evaluation: numpy/scikit-learn metrics, the per-class report and its plots, and the
published tables it compares against. Nothing here imports Keras or TensorFlow."""
