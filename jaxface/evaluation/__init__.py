"""Evaluation protocols, reproduced to the last digit.

``widerface`` (the official WIDER FACE tool's semantics, ``widerface_official``, or the
Python port's, ``widerface_port``),
``verification`` (LFW View 2 and CFP FF/FP: 10-fold accuracy, EER, AUC, TAR@FAR, ROC),
``all_pairs`` (streamed all-pairs TAR@FAR), ``identification`` (1:N rank-k / CMC /
DIR@FPIR, through ``host_staging``), ``face_pairs`` (the recognition evaluators' pair
sets and report), ``attributes`` (balanced accuracy), ``draw`` (pictures of detections),
``stats`` (bootstrap confidence intervals and paired differences between two systems).
They import NumPy / JAX / matplotlib only, never the trainer or TensorFlow.
"""
