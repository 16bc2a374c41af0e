"""Training. engine.fit runs one run: setup, the epoch loop, the summary. trainer.py holds the run's
objects and its checkpoint; evaluation.py scores a split (training and `cifarlab evaluate` alike);
splits.py loads the data; device.py picks device and precision; optim.py, lookahead.py,
distributed.py, state.py and progress.py are the parts they use."""
