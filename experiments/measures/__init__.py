"""Measurement code of the experiments, each module unit-tested on known answers.

Kept apart from the experiments that use it so that what is measured (a percentile, a
growth rate, a calibration error, an AUROC) can be checked on inputs whose answer is
known before it is trusted on a trained network.
"""
