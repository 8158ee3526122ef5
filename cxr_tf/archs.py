"""The names of the networks `cxr_tf.model.build_model` offers.

Kept apart from model.py (which imports Keras, and with it TensorFlow) so that configs and
flags can list the choices without starting TensorFlow.
"""

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50_v1", "resnet101_v1",
         "densenet121", "densenet169", "efficientnetv2_s", "convnext_tiny")
