"""Serving: the in-graph preprocessing and export archive (`graph`), the run dir's readers and
writers (`run_dir`), the predictor behind `cxr_tf.predict`, and Grad-CAM."""
