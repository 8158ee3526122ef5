"""Training: one run from a config (`runner`), its callbacks, the tf.distribute strategy, and
the one module that touches private Keras names (`keras_compat`)."""
