"""The ML zoo: weights as bytes, models, datasets, partitioners and the learner.

TensorFlow is imported lazily, only to build, train or evaluate a model or to
download full MNIST, so validators' consensus and the command line do not pay
for it. Importing this package first keeps TensorFlow's informational start-up
lines out of the output, unless ``TF_CPP_MIN_LOG_LEVEL`` is set already.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
