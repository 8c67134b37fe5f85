"""The ML zoo: weights as bytes, models, datasets, partitioners and the learner.

TensorFlow is imported lazily, only to build, train or evaluate a model or to
download full MNIST, so validators' consensus and the command line do not pay
for it. Importing this package first keeps TensorFlow's informational start-up
lines out of the output: its log level (unless ``TF_CPP_MIN_LOG_LEVEL`` is set
already) and, for the lines printed before that applies, :mod:`flobc.ml.quiet`.
"""

import os

from flobc.ml.quiet import quiet_tensorflow_import

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
quiet_tensorflow_import()
