"""Trainers: fine-tune the initializers of ONNX graphs, with torch (the ``[train]`` extra) or with
onnxruntime-training (the ``[ort-training]`` extra); ``ttcompile.train.backends`` chooses between them."""
