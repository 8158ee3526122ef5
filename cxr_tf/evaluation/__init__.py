"""Evaluation: numpy/scikit-learn metrics, the per-class report and its plots, the published
tables it compares against, and the extra sections (radiologist labels, external sets, boxes).
Those modules import neither Keras nor TensorFlow; `gradcam` (the model's maps) and `runner`
(the evaluate app's library, taking a `config.EvalConfig`) do."""
