"""Training: from a `TrainConfig` and a dataset to a saved model, one run per output directory.

    loop.py         `fit`: the run as named phases (start or resume, train an epoch, evaluate and
                    select, checkpoint, finish), `train.refit`, the model and loss a run builds
    step.py         one training step through autograd (`AutogradStep`) and the batch -> loss
                    inputs it shares with the fused step; `make_train_step` picks one
    fused_step.py   `TableStep`: the fused step of matrix-factorisation models, the only code that
                    steps the id tables itself, on the optimizer's own slots
    batches.py      `BatchIterator`: shuffled batches with negatives, a pure function of (seed,
                    epoch, index), and the sampler dispatch
    prefetch.py     the worker thread that prepares an epoch's batches ahead of the step
    optim.py        the optimizer (row-sparse `LazyAdam`), gradient clipping, the learning rate
    checkpoint.py   checkpoints and the intact-checkpoint search of `--resume`
    run_lock.py     one run per output directory

The names below load on first use, so that importing one module (e.g. `training.batches`, which
needs no torch) does not load the others.
"""

from twotower._lazy import lazy_exports

_LAZY = {
    "TrainResult": "twotower.training.run_outputs",
    "TrainingDiverged": "twotower.training.step",
    "build_model": "twotower.training.loop",
    "fit": "twotower.training.loop",
}

__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
