"""Serving: the in-graph preprocessing and export archive (`graph`), the export and predict
apps' configs (`config`), the predictor behind `cxr_tf.predict` and the files it reads
(`inputs`), and Grad-CAM."""
