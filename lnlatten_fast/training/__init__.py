"""Training and evaluation: the paper's protocol (SPEC §5) around LNLAttenNet.

settings     TrainSettings: the run's fields with the model's LNLConfig nested
trainer      `train`: the loop, run directories, summaries, K-fold runs
loading      the (train, test) images of a run, or just its test split
evaluation   test accuracy of a model, and of a checkpoint on its run's test split
inference    a checkpoint's model on image files
precision    fp32 or bf16 autocast
checkpoint   atomic writes; older checkpoint formats migrated on load
distributed  torchrun data parallelism and device choice
metrics      accuracy, mean class accuracy, confusion matrices
"""
