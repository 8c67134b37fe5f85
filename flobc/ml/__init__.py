"""The ML zoo: weights as bytes, models, datasets, partitioners and the learner.

TensorFlow is imported lazily, only to build, train or evaluate a model or to
download full MNIST, so validators' consensus and the command line do not pay
for it.
"""
