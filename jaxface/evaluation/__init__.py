"""Evaluation protocols, reproduced to the last digit.

``widerface`` (the official WIDER FACE tool's semantics), ``verification`` (LFW View 2
and CFP FF/FP: 10-fold accuracy, EER, AUC, TAR@FAR, ROC), ``identification`` (streamed
all-pairs TAR@FAR, 1:N rank-k / CMC / DIR@FPIR), ``attributes`` (balanced accuracy),
``stats`` (bootstrap confidence intervals and paired differences between two systems).
They import NumPy / JAX / matplotlib only, never the trainer or TensorFlow.
"""
