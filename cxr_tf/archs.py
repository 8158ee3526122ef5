"""The names of the networks `cxr_tf.model.build_model` offers.

Kept apart from model.py (which imports Keras, and with it TensorFlow) so that configs and
flags can list the choices without starting TensorFlow.
"""

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50_v1", "resnet101_v1",
         "densenet121", "densenet169", "efficientnetv2_s", "convnext_tiny")
# The archs with keras.applications ImageNet weights (`cxr_tf.pretrained.IMAGENET`, which holds
# where each file comes from; tests/test_run_config.py checks the two agree), named here for
# the help of the weights arguments.
IMAGENET_ARCHS = ("resnet50_v1", "resnet101_v1", "densenet121", "densenet169",
                  "efficientnetv2_s", "convnext_tiny")
