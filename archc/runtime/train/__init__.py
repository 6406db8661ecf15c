"""archc's one training loop. Imports torch (and rich for progress), never the compiler.

Everything archc trains goes through `fit`: candidates of `archc search`, and
later DARTS, distillation and `archc train`. Extra behaviour is added with
callbacks, never with a second loop.

    from archc.runtime.train import fit, evaluate, TrainConfig, Callback

    config = TrainConfig(epochs=3, lr=3e-3, optimizer="adamw", patience=2, seed=0, progress=True)
    result = fit(model, data.train, data.val, config)     # -> FitResult
    result.metrics        # the final evaluation on `val`: {"loss", "accuracy", "count", "step", "epoch"}
    result.best           # best value of config.monitor ("accuracy", mode "max" by default)
    evaluate(model, data.test)                             # {"loss", "accuracy", "count"}

`fit(model, train, val=None, config=None, *, callbacks=(), loss_fn=None,
optimizer=None, params=None, evaluate_fn=None) -> FitResult`

- `train`, `val`: iterables of batches (DataLoaders). A batch is
  `(inputs..., target)` or a dict with a `"target"` key and the inputs by
  name. Inputs are moved to the device (`config.device`, else the model's).
- `config` (TrainConfig): length (`epochs` and/or `steps`, whichever ends
  first), optimizer (`optimizer` sgd|adam|adamw, `lr`, `weight_decay`,
  `momentum`, `betas`), `schedule` (constant|cosine|linear) with
  `warmup_steps`, `accumulate`, `clip_grad`, `precision`
  (fp32|fp16|bf16|fp16-mixed|bf16-mixed), evaluation (`eval_every` steps,
  default once per epoch), early stopping (`monitor`, `mode`, `patience`,
  `restore_best`), `seed` (seeds python, torch, numpy and the DataLoader's
  shuffling generator at the start: same seed, same run), and a
  rich progress bar (`progress`, `description`).
- `loss_fn(outputs, target)`: default cross-entropy on the primary output
  (the output named `logits`, else the first).
- `optimizer`: a ready torch optimizer (then the config's optimizer fields
  are ignored); or `params`: what the config's optimizer trains (default: all
  parameters that require grad). DARTS passes the weights here and steps its
  architecture parameters itself in a callback.
- `evaluate_fn(model, val) -> dict`: replaces `evaluate` for other metrics.

Callbacks (subclass `Callback`, or `LambdaCallback(on_evaluate=fn)`) see a
mutable `TrainState` (model, optimizer, scheduler, epoch, step, loss,
metrics, history, best, `stop`/`stop_reason`, and `extras` for their own data):

- `on_fit_start`, `on_epoch_start`, `on_epoch_end`, `on_fit_end`; `on_fit_start`
  may restore a resumed run's counters (`state.step`, `state.epoch`, history, best):
  the loop continues from `state.epoch` (archc train's checkpoints,
  archc.runtime.objectives.Checkpointer);
- `on_step_start(state, batch)`: before each forward (DARTS's architecture
  step on a validation batch goes here);
- `on_loss(state, batch, outputs, loss) -> loss`: change the loss before the
  backward pass (distillation adds its teacher term here);
- `on_step_end(state)`: after each optimizer step (an EMA update goes here);
- `on_evaluate(state, metrics)`: after each evaluation; report intermediate
  values (search reports them to Optuna for pruning and raises
  `optuna.TrialPruned`, which propagates out of `fit`), or set `state.stop`.

Helpers: `seed_everything(seed)`, `make_optimizer(params, config)`,
`split_batch(batch)`, `primary_output(model, outputs)`, `cross_entropy`.
"""
from .loop import (
    Callback,
    FitResult,
    LambdaCallback,
    TrainConfig,
    TrainState,
    cross_entropy,
    evaluate,
    fit,
    make_optimizer,
    primary_output,
    seed_everything,
    split_batch,
)

__all__ = [
    "Callback", "FitResult", "LambdaCallback", "TrainConfig", "TrainState", "cross_entropy", "evaluate", "fit",
    "make_optimizer", "primary_output", "seed_everything", "split_batch",
]
