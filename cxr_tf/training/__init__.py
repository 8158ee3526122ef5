"""Training: one run from a RunConfig (`runner`), its callbacks, the tf.distribute strategy,
and the one module that touches private Keras names (`keras_compat`). The run dir it writes
is `cxr_tf.runs`."""
