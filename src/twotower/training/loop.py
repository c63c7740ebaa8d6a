"""The training loop: batches -> towers -> loss -> optimizer, with validation, early stopping,
checkpoints that survive a crash, and `--resume` that continues exactly where a run stopped.

Reads top to bottom: `fit` takes the run directory's lock and runs `_fit` (and `_refit` with
`train.refit`); `_fit` is the run as named phases on one screen (build, start or resume, clear
earlier outputs, then per epoch: mine, train, evaluate and select, log, checkpoint; then finish),
each phase a function below it or in its own module (`run_state`: the run's shared pieces, start or
resume; `loss_reads`: reading the step losses; `run_outputs`: what a finished run leaves). Each
epoch's batches are a pure function of (seed, epoch), the torch RNG is saved with every checkpoint
(at the end of every `train.checkpoint_every`-th epoch), and the learning rate is a pure function of
the step, so a run killed at any point and resumed from its last checkpoint replays the epochs after
it and finishes with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from twotower import __version__
from twotower.atomic import (
    disk_usage,
    named_error,
    read_json_object,
    write_dir_atomic,
    write_json_atomic,
)
from twotower.data import SplitDataset
from twotower.data.split import with_valid_in_train
from twotower.datasets import fingerprint, load_dataset
from twotower.evaluate import EvalResult, evaluate_model
from twotower.kernels._rng import derive_seed
from twotower.losses import LossConfig, make_loss
from twotower.model.io import save_model
from twotower.model.two_tower import TwoTowerModel
from twotower.settings import TrainConfig
from twotower.training import hardware
from twotower.training.batches import BatchIterator
from twotower.training.checkpoint import (
    latest_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
)
from twotower.training.device_batches import DeviceBatches
from twotower.training.distributed import ONE_PROCESS, Cluster, DistributedStep, rng_states, unsupported
from twotower.training.fused_step import TableStep
from twotower.training.known_positives import KnownPositives
from twotower.training.loss_reads import LossReads, loss_read_every
from twotower.training.optim import LazyAdam, learning_rate, make_optimizer
from twotower.training.run_lock import run_lock
from twotower.training.run_outputs import CHECKPOINTS, MODEL, TrainResult, finish_run
from twotower.training.run_state import REFIT, Run, State, clear_earlier_outputs, start_or_resume
from twotower.training.step import AutogradStep, TrainingDiverged, make_train_step

__all__ = ["TrainResult", "TrainingDiverged", "build_model", "fit", "training_loss"]


log = logging.getLogger("twotower.training")


def resolve_device(name: str, cluster: Cluster | None = None) -> torch.device:
    """The device `train.device` names; under distributed training on CUDA, this rank's GPU
    (`cuda:LOCAL_RANK`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    if name == "cuda" and cluster is not None and cluster.active:
        torch.cuda.set_device(cluster.local_rank)
        return torch.device("cuda", cluster.local_rank)
    return torch.device(name)


def training_loss(config: TrainConfig, dataset: SplitDataset) -> LossConfig:
    """The loss settings a run trains with: `config.loss`, its unset softmax temperature taken from
    the training split (`LossConfig.for_data`: the catalogue size against the items per user)."""
    users = max(1, int(np.unique(dataset.train.users).size))
    return config.loss.for_data(dataset.num_items, len(dataset.train.users) / users)


def build_model(config: TrainConfig, dataset: SplitDataset) -> TwoTowerModel:
    """The model for `dataset`; the loss owns the temperature, and the model records it so that a
    saved model reports the temperature it trained with."""
    model = TwoTowerModel(
        config.model,
        num_users=dataset.num_users,
        num_items=dataset.num_items,
        user_features=dataset.user_features,
        item_features=dataset.item_features,
        temperature=training_loss(config, dataset).resolved_temperature,
    )
    if config.model.user_history or config.model.item_history:
        model.set_history(dataset.train_history)
    return model


def fit(config: TrainConfig, out_dir: str | Path, *, dataset: SplitDataset | None = None, resume: bool = False,
        echo: Callable[[str], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Trains a two-tower model as `config` says and writes everything under `out_dir`.

    Started by torchrun (RANK and WORLD_SIZE in the environment), the processes train as one run
    with negatives shared across them and rank 0 writing `out_dir` (`twotower.training.distributed`).

    `out_dir` receives `checkpoints/` (every `train.checkpoint_every` epochs; a finished run keeps
    the newest, without optimizer state unless `train.keep_optimizer_state`), `best/` (the best
    epoch so far), `model/` (the best epoch on validation, or the last epoch when the data has no
    validation split: see `twotower.model.model_dir`; its weights a hard link of `best/`'s),
    `results.json`, `metrics.jsonl` (one line per epoch), `training.png`.

    Args:
        config: every setting (validated here).
        out_dir: output directory (created).
        dataset: an already built dataset; default: `load_dataset(config.data)`.
        resume: continue from the newest checkpoint in `out_dir/checkpoints` (which must come from
            the same config and data). A fresh run first clears an earlier run's `checkpoints/` and
            `best/` there; its `model/` is replaced only once the new one is complete.
        echo: receives one line per epoch (epoch, loss, validation metric, seconds, estimated time
            left); default: printed above the progress bars when `train.progress` is on, else nowhere.
        on_epoch: called with each epoch's record (the line of `metrics.jsonl`: "epoch", "train_loss",
            "valid" metrics when that epoch was evaluated, ...) once the epoch is logged (and
            checkpointed, when it writes one). An exception it raises (e.g. Optuna's `TrialPruned`, see `twotower.tune`)
            propagates out of `fit` and leaves `out_dir` as a run interrupted after that epoch:
            consistent, and resumable with `resume=True`.

    Raises:
        RunDirectoryLocked: another run is writing into `out_dir` (its pid, host and start are named).
        TrainingDiverged: the loss became NaN or infinite (the step is named).
        ValueError: inconsistent settings, or a checkpoint from another config or dataset.
    """
    config.validate()
    cluster, joined = _start_cluster(config)
    device = resolve_device(config.train.device, cluster)
    if config.train.tune_allocator and device.type == "cpu":
        hardware.tune_allocator()
    if config.train.cpu_amp and device.type == "cpu" and not hardware.cpu_has_bf16():
        log.warning("train.cpu_amp: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX); bfloat16 is emulated "
                    "and slower than float32 here")
    previous = torch.get_num_threads()
    torch.set_num_threads(hardware.step_threads(config.train.num_threads, device, cluster.local_world))
    if not cluster.is_main:  # progress and logs come from rank 0
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, progress=False))
        echo = _silent
    if echo is None:
        echo = tqdm.write if config.train.progress else _silent
    lock = run_lock(out_dir) if cluster.is_main else contextlib.nullcontext(Path(out_dir))
    try:
        with lock as locked_dir:
            dataset = dataset if dataset is not None else load_dataset(config.data)
            result = _fit(config, locked_dir, device, dataset, resume, echo, on_epoch, cluster)
            if config.train.refit:
                result = _refit(config, locked_dir, device, dataset, result, resume, echo, cluster)
        if joined:  # after the last collective; a failed rank leaves it to the process's exit
            cluster.stop()
        return result
    finally:
        torch.set_num_threads(previous)


def _start_cluster(config: TrainConfig) -> tuple[Cluster, bool]:
    """The ranks of this run (torchrun's environment) and whether this call joined their process
    group; settings that cannot train across processes are refused first."""
    cluster = Cluster.from_env()
    if not cluster.active:
        return cluster, False
    why = unsupported(config)
    if why is not None:
        raise ValueError(why)
    device_type = "cuda" if resolve_device(config.train.device).type == "cuda" else "cpu"
    return cluster, cluster.start(device_type, config.train.distributed_timeout)


def _silent(line: str) -> None:
    """An `echo` that shows nothing."""


def _refit(config: TrainConfig, out_dir: Path, device: torch.device, dataset: SplitDataset, selected: TrainResult,
           resume: bool, echo: Callable[[str], None], cluster: Cluster) -> TrainResult:
    """`train.refit`: a second run in `out_dir/refit` on train + valid, stopped after the selected
    run's best epoch on the same learning-rate schedule (so it retraces the selected model's
    trajectory with more data), with the temperature the selected run trained with (a data rule
    would read the larger split) and the graph filter weight and sharpening it chose; results.json
    gains its test metrics."""
    selection = out_dir / "results.json"
    chosen = read_json_object(selection).get("graph_filter", {}) if selection.is_file() else {}
    model = config.model if "weight" not in chosen else dataclasses.replace(
        config.model, graph_filter_weights=[chosen["weight"]],
        graph_filter_sharpening=[chosen.get("sharpening", 0.0)])
    refit_config = dataclasses.replace(
        config, loss=training_loss(config, dataset), model=model,
        train=dataclasses.replace(config.train, refit=False, patience=0, eval_every=config.train.epochs))
    refit_dir = out_dir / REFIT
    resume_refit = resume and resumable_checkpoint(refit_dir / CHECKPOINTS)[0] is not None
    echo(f"refit: training on train + valid for {selected.best_epoch} epochs (the selected epoch) -> {refit_dir}")
    refit = _fit(refit_config, refit_dir, device, with_valid_in_train(dataset), resume_refit,
                 lambda line: echo(f"refit {line}"), None, cluster, stop_after=selected.best_epoch)
    if not cluster.is_main:
        return dataclasses.replace(selected, refit=refit)
    results = read_json_object(out_dir / "results.json")
    results["refit"] = {"epochs": selected.best_epoch, "train_rows": len(dataset.train) + len(dataset.valid),
                        "model_dir": f"{REFIT}/{MODEL}", "test": refit.test.to_dict()}
    write_json_atomic(out_dir / "results.json", results)
    return dataclasses.replace(selected, refit=refit, disk_bytes=disk_usage(out_dir))


def _fit(config: TrainConfig, out_dir: Path, device: torch.device, dataset: SplitDataset, resume: bool,
         echo: Callable[[str], None], on_epoch: Callable[[dict[str, Any]], None] | None,
         cluster: Cluster = ONE_PROCESS, stop_after: int | None = None) -> TrainResult:
    """One run in `out_dir`, as phases: build the run, start it or resume it, clear what an earlier
    run left, then every epoch train, evaluate and select, log and checkpoint; finally evaluate the
    selected weights and write the model. `stop_after` ends the run after that epoch on the
    schedule of `train.epochs` (`train.refit`)."""
    run = _build_run(config, out_dir, device, dataset, echo, stop_after, cluster)
    state = start_or_resume(run, resume)
    clear_earlier_outputs(run, state, resume)
    loop, last_epoch = config.train, run.last_epoch
    run_started = time.perf_counter()
    for epoch in range(state.start_epoch, last_epoch):
        if state.stale >= loop.patience > 0:
            break
        epoch_started = time.perf_counter()
        _mine_if_due(run, state, epoch)
        record = _train_epoch(run, state, epoch)
        _evaluate_and_select(run, state, record)
        _log_epoch(run, state, record)
        stopping = state.stale >= loop.patience > 0
        if (epoch + 1) % loop.checkpoint_every == 0 or epoch + 1 == last_epoch or stopping:
            _checkpoint(run, state, epoch)
        mean_seconds = (time.perf_counter() - run_started) / (epoch + 1 - state.start_epoch)
        echo(epoch_line(record, last_epoch, loop.select_metric, time.perf_counter() - epoch_started,
                        None if stopping else mean_seconds * (last_epoch - epoch - 1)))
        if on_epoch is not None:
            on_epoch(record)
    return _finish(run, state)


def _build_run(config: TrainConfig, out_dir: Path, device: torch.device, dataset: SplitDataset,
               echo: Callable[[str], None], stop_after: int | None, cluster: Cluster = ONE_PROCESS) -> Run:
    """Checks the output directory and the settings against the data, then builds the model, the
    loss, the optimizer, the step and the batch iterator from the run's seed."""
    loop = config.train
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output directory {out_dir} is a file; choose another --out")
    if cluster.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if loop.refit and len(dataset.valid) == 0:
        raise ValueError("train.refit needs a validation split to choose the epoch on; this data has none")
    last_epoch = min(loop.epochs, stop_after or loop.epochs)
    # Data files saved absolute, so that `evaluate MODEL` finds them from any working directory.
    located = dataclasses.replace(config, data=config.data.resolved(Path.cwd()))
    saved_config = {"twotower_version": __version__, "train_config": located.to_dict(),
                    "data_fingerprint": fingerprint(dataset)}

    torch.manual_seed(loop.seed)
    model = build_model(config, dataset).to(device)
    loss_fn = make_loss(training_loss(config, dataset)).to(device)
    optimizer = make_optimizer([model, loss_fn], config.optim)
    batches = _make_batches(config, dataset, device, cluster)
    train_step = _make_step(config, model, loss_fn, optimizer, device, cluster, batches, echo)
    if len(batches) == 0:
        raise ValueError(f"batches.batch_size {config.batches.batch_size} with batches.drop_last leaves no batch: the "
                         f"training split has {len(dataset.train.users)} rows; lower the batch size")
    return Run(config, out_dir, device, dataset, echo, last_epoch, saved_config, model, loss_fn, optimizer,
                train_step, batches, cluster)


def _make_batches(config: TrainConfig, dataset: SplitDataset, device: torch.device,
                  cluster: Cluster) -> BatchIterator | DeviceBatches:
    """The epoch iterator: batches built on the host by the Numba samplers, or on the training
    device (`batches.on_device`)."""
    train, history = dataset.train, (dataset.train_history.indptr, dataset.train_history.indices)
    shard = (cluster.rank, cluster.world)
    if config.batches.on_device:
        return DeviceBatches(train.users, train.items, num_items=dataset.num_items, config=config.batches,
                             history=history, device=device, shard=shard)
    return BatchIterator(train.users, train.items, num_items=dataset.num_items, config=config.batches,
                         history=history, shard=shard)


def _make_step(config: TrainConfig, model: TwoTowerModel, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
               device: torch.device, cluster: Cluster, batches: BatchIterator | DeviceBatches,
               echo: Callable[[str], None]) -> AutogradStep | TableStep | DistributedStep:
    """The training step: across ranks the distributed autograd step (the fused table step would
    step the tables outside autograd, so it gives way, said once), else `make_train_step`'s. The
    ranks' dropout draws come from streams of their own (rank 0 keeps the one-process stream)."""
    known = _known_positives(config, batches, device)
    if not cluster.active:
        return make_train_step(config, model, loss_fn, optimizer, device, known)
    if TableStep.unsupported(config, model, loss_fn, optimizer, device) is None:
        echo("notice: the fused table step (train.fused_step) does not run in distributed training; the autograd "
             "step trains instead (the same updates)")
    if cluster.rank:
        torch.manual_seed(derive_seed(config.train.seed, cluster.rank))
    echo(f"distributed: {cluster.world} ranks, global batch {config.batches.batch_size * cluster.world} "
         f"({config.batches.batch_size} per rank), negatives shared across ranks")
    return DistributedStep(model, loss_fn, optimizer, device, config.optim.clip_norm, cluster, batches.global_rows,
                           known)


def _known_positives(config: TrainConfig, batches: BatchIterator | DeviceBatches,
                     device: torch.device) -> KnownPositives | None:
    """The history that names each batch's known positives (`batches.mask_known_positives`): the
    one the batches exclude from per-row negatives."""
    if not config.batches.mask_known_positives:
        return None
    indptr, indices = batches.history
    return KnownPositives(indptr, indices, batches.num_items, device)


def _mine_if_due(run: Run, state: State, epoch: int) -> None:
    """With hard negatives, every `train.hard_mining_every` epochs (not before the first): the
    current model's best-scoring items of every user become the candidates of the epochs after."""
    loop = run.config.train
    if run.config.batches.negative_kind == "hard" and epoch > 0 and epoch % loop.hard_mining_every == 0:
        state.candidates = _mine_hard_negatives(run.model, run.dataset, loop.hard_candidates, run.threads)
        run.batches.set_candidates(state.candidates)


def _mine_hard_negatives(model: TwoTowerModel, dataset: SplitDataset, count: int, threads: int | None) -> np.ndarray:
    """[U, count] best-scoring items of every user under the current model, train items excluded."""
    import twotower

    model.eval()
    users, items = model.user_search_vectors(), model.item_search_vectors()
    model.train()
    history = dataset.train_history
    _, ids = twotower.topk(users, items, count, exclude=(history.indptr, history.indices), num_threads=threads)
    return ids


def _train_epoch(run: Run, state: State, epoch: int) -> dict[str, Any]:
    """One pass over the epoch's batches, each step at the scheduled learning rate; the epoch's
    record (loss, speed). A non-finite loss stops the run naming the step and the last good
    checkpoint, before anything of it is saved (on the CPU before its update; on CUDA, whose
    losses are read back every few steps so the GPU can run ahead, at the next read)."""
    config, model, optimizer, train_step = run.config, run.model, run.optimizer, run.train_step
    loop, device = config.train, run.device
    total_steps = loop.epochs * len(run.batches)
    autocast = loop.amp if device.type == "cuda" else loop.cpu_amp and device.type == "cpu"
    reads = LossReads(epoch, loss_read_every(device, train_step), lambda: _last_good(run.checkpoint_root))
    model.train()
    with run.batches.epoch(epoch) as epoch_batches:
        bar = tqdm(epoch_batches, desc=f"epoch {epoch + 1}/{run.last_epoch}", disable=not loop.progress, leave=False)
        for batch in bar:
            lr = learning_rate(state.step, total_steps, config.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = train_step.loss(batch)
            if reads.every == 1:  # host sync: the NaN check before the update, and the progress bar
                reads.check(state.step, [_loss_value(train_step, loss)], [len(batch.users)])
            try:
                train_step.update(loss)
            except TrainingDiverged as error:
                raise TrainingDiverged(f"{error} at epoch {epoch + 1}, step {state.step + 1}; training stopped. "
                                       f"{_last_good(run.checkpoint_root)}") from None
            state.step += 1
            if reads.every > 1:
                reads.add(state.step, loss.detach(), len(batch.users))
            bar.set_postfix(loss=f"{reads.last:.4f}", lr=f"{lr:.2e}", samples_s=f"{reads.samples_per_s():.0f}")
        reads.flush(state.step)
    if isinstance(optimizer, LazyAdam):
        optimizer.flush()  # with optim.replay_skipped_steps: every row up to date before validation and saving
    seconds = time.perf_counter() - reads.started
    bad = _non_finite_parameter([model, run.loss_fn])
    if bad is not None:  # the loss of the epoch's last step was finite, its update was not
        raise TrainingDiverged(f"{bad} holds NaN or infinite values after epoch {epoch + 1} (step {state.step}); "
                               f"training stopped before saving them. {_last_good(run.checkpoint_root)}")
    return {"epoch": epoch + 1, "step": state.step, "train_loss": reads.loss_sum / max(reads.seen, 1),
            "samples_per_s": reads.seen / seconds, "epoch_seconds": seconds}


def _loss_value(train_step: AutogradStep | TableStep | DistributedStep, loss: torch.Tensor) -> float:
    """The step's loss as a float: across ranks the global batch's (every rank the same value)."""
    if isinstance(train_step, DistributedStep):
        return train_step.value(loss)
    return float(loss.detach())


def _evaluate_and_select(run: Run, state: State, record: dict[str, Any]) -> None:
    """Every `train.eval_every` epochs and at the last: the validation metrics into `record`, and
    the epoch's weights saved as the best when its `train.select_metric` beats the best so far
    (else one more stale evaluation). Without a validation split there is nothing to select on:
    every evaluated epoch is the newest best (no early stopping), so the model is the last epoch's.
    Across ranks the validation is sharded (every rank ranks its share of the users, the metrics
    combined on all) or rank 0's (`train.distributed_eval`); rank 0 selects, and the others receive
    its outcome (early stopping included). `record["valid_seconds"]`: the validation's wall time
    (the ranks' collective one when sharded, rank 0's own otherwise)."""
    started, valid = time.perf_counter(), None
    if run.cluster.active and run.config.train.distributed_eval == "sharded" and _validation_due(run, record):
        run.model.eval()
        valid = evaluate_model(run.model, run.dataset, split="valid", ks=run.config.train.ks,
                               num_threads=hardware.eval_threads(run.config.train.num_threads, run.cluster.local_world),
                               progress=False, protocol=run.config.eval, shard=(run.cluster.rank, run.cluster.world),
                               combine=run.cluster.reduce_metrics, device=run.device)
    if run.cluster.is_main:
        _evaluate_here(run, state, record, valid)
        if "valid" in record:
            record["valid_seconds"] = time.perf_counter() - started
    if run.cluster.active:
        shared = run.cluster.broadcast((state.best, state.best_epoch, state.stale, record.get("valid")))
        state.best, state.best_epoch, state.stale = shared[:3]
        if shared[3] is not None:
            record["valid"] = shared[3]


def _evaluated_epoch(run: Run, record: dict[str, Any]) -> bool:
    """Whether the epoch of `record` is an evaluation's: every `train.eval_every` epochs, and the last."""
    epoch = record["epoch"]
    return epoch % run.config.train.eval_every == 0 or epoch == run.last_epoch


def _validation_due(run: Run, record: dict[str, Any]) -> bool:
    """Whether the epoch of `record` is validated: an evaluation's epoch, with a validation split."""
    return len(run.dataset.valid.users) > 0 and _evaluated_epoch(run, record)


def _evaluate_here(run: Run, state: State, record: dict[str, Any], valid: EvalResult | None = None) -> None:
    """`_evaluate_and_select` in this process, on `valid` when the ranks have validated together."""
    loop, epoch = run.config.train, record["epoch"]
    if not _evaluated_epoch(run, record):
        return
    run.model.eval()
    if len(run.dataset.valid.users) == 0:
        state.best_epoch, state.stale = epoch, 0
        _save_best(run.best_dir, run.model, run.loss_fn, run.saved_config)
        return
    if valid is None:
        valid = evaluate_model(run.model, run.dataset, split="valid", ks=loop.ks, num_threads=run.threads,
                               progress=False, protocol=run.config.eval, device=run.device)
    record["valid"] = valid.metrics
    score = _select(valid, loop.select_metric)
    if score > state.best:
        state.best, state.best_epoch, state.stale = score, epoch, 0
        _save_best(run.best_dir, run.model, run.loss_fn, run.saved_config)
    else:
        state.stale += 1


def _select(result: EvalResult, metric: str) -> float:
    """The score an evaluation is selected by: its `metric` (higher is better)."""
    return float(result.metrics[metric])


def _log_epoch(run: Run, state: State, record: dict[str, Any]) -> None:
    """The epoch's record joins the history and metrics.jsonl (rank 0's)."""
    state.history.append(record)
    if not run.cluster.is_main:
        return
    try:
        with run.metrics_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # a full disk: name the log (a resumed run rewrites it from its checkpoint)
        raise named_error(err, run.metrics_log) from err


def _checkpoint(run: Run, state: State, epoch: int) -> None:
    """checkpoints/epoch-NNNN: weights, optimizer and RNG state, the batch iterator's state, the
    mined candidates, the trainer state and the vocabularies; the newest `train.keep_checkpoints` stay."""
    arrays = {f"batches.{k}": v for k, v in run.batches.state_dict().items()}
    if state.candidates is not None:
        arrays["candidates"] = state.candidates
    if run.cluster.active:  # every rank's RNG, so that each resumes its own dropout stream
        arrays.update(rng_states(run.cluster))
        if not run.cluster.is_main:
            run.cluster.barrier()  # rank 0 writes it
            return
    vocab_files = {"user_vocab.parquet": run.dataset.user_vocab.save, "item_vocab.parquet": run.dataset.item_vocab.save}
    save_checkpoint(run.checkpoint_root, f"epoch-{epoch + 1:04d}", model=run.model, config=run.saved_config,
                    loss_fn=run.loss_fn, optimizer=run.optimizer, arrays=arrays, keep=run.config.train.keep_checkpoints,
                    extra_files=vocab_files,
                    trainer_state={"epoch": epoch, "step": state.step, "best": state.best,
                                   "best_epoch": state.best_epoch, "stale": state.stale, "history": state.history,
                                   "world": run.cluster.world})
    run.cluster.barrier()


def epoch_line(record: dict[str, Any], epochs: int, metric: str, seconds: float, left: float | None) -> str:
    """One line about a finished epoch: "epoch 7/30: loss 0.4321, valid ndcg@10 0.2345, 25.1 s,
    ~9 min 35 s left" (`seconds`: the epoch with its evaluation and checkpoint; `left`: the time the
    remaining epochs should take, None when early stopping ends the run here)."""
    parts = [f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}"]
    if "valid" in record:
        parts.append(f"valid {metric} {record['valid'][metric]:.4f}")
    parts.append(f"{seconds:.1f} s")
    if record["epoch"] < epochs:
        parts.append("early stop" if left is None else f"~{duration(left)} left")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """A short human duration: "45 s", "12 min 5 s", "2 h 3 min"."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _save_best(best_dir: Path, model: TwoTowerModel, loss_fn: torch.nn.Module, saved_config: dict[str, Any]) -> None:
    """The weights of the best epoch so far, with the temperature the loss had then (a learned one
    moves on), kept apart from the rolling checkpoints."""
    model.set_temperature(loss_fn.temperature)
    write_dir_atomic(best_dir, lambda tmp: save_model(tmp, model, extra=saved_config))


def _non_finite_parameter(modules: list[torch.nn.Module]) -> str | None:
    """The name of the first parameter holding NaN or infinity, or None."""
    for module in modules:
        for name, param in module.named_parameters():
            if not bool(torch.isfinite(param.detach()).all()):
                return f"{type(module).__name__}.{name}"
    return None


def _last_good(checkpoint_root: Path) -> str:
    last = latest_checkpoint(checkpoint_root)
    if last is None:
        return "No checkpoint was written before (try a lower optim.lr or optim.clip_norm)."
    return f"The last good checkpoint is {last} (try a lower optim.lr or optim.clip_norm)."


def _finish(run: Run, state: State) -> TrainResult:
    """Restores the best weights, evaluates valid and test next to the popularity baseline, writes
    the model directory and the plot, then leaves the run directory as small as a finished run can
    be (`run_outputs.settle`). Across ranks rank 0 does it and the others receive its result."""
    if not run.cluster.active:
        return _finish_here(run, state)
    result = _finish_here(run, state) if run.cluster.is_main else None
    return run.cluster.broadcast(result)


def _finish_here(run: Run, state: State) -> TrainResult:
    """`_finish` in this process."""
    return finish_run(run.config, run.out_dir, run.model, run.loss_fn, run.dataset, run.saved_config,
                      state.best_epoch, state.history, run.threads)
