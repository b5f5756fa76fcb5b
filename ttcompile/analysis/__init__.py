"""Analysis of a model on data: calibration features, LWIQ significance and sensitivity curves, moments,
recovery."""
