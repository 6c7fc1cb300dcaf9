"""The training loop shared by pretraining, LPT and StateX post-training (they differ only in the model given
and the expansion options). One process, or several under ``torchrun`` (DDP or FSDP2)."""
from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import time
import warnings
from typing import Any

import torch
from tqdm import tqdm

from statex.data import load_tokenizer
from statex.data.cache import build_token_cache
from statex.data.dataset import TrainStream, load_packed, parse_synthetic
from statex.errors import StatexError
from statex.files import write_atomic
from statex.locks import RunLock
from statex.strict_json import dumps_strict
from statex.train import distributed, heldout, optim_state
from statex.train.checkpoint import checkpoint_dirs, load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from statex.train.config import TrainConfig, check_resumable
from statex.train.preflight import check_request
from statex.train.optim_state import build_param_groups
from statex.train.run_directory import RUN_CONFIG, check_run_directory, read_run_config, trim_metrics
from statex.train.interrupts import SignalCatcher
from statex.train.loss import weighted_loss
from statex.train.schedule import learning_rate
from statex.train.state_passing import StatePassing


class TrainingStopped(StatexError):
    """The run stopped before its last step (a non-finite loss, or too many skipped steps)."""


class TrainingInterrupted(StatexError):
    """SIGINT / SIGTERM: a checkpoint was written; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary ({"steps", "final_loss", "heldout_loss", "out", ...})."""
    config.validate()
    env = distributed.setup(config.device)
    run = None
    try:
        run = _Run(config, env)
        return run.run()
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
        distributed.teardown()


class _Run:
    def __init__(self, config: TrainConfig, env: distributed.Dist):
        self.config, self.env = config, env
        self.signals = SignalCatcher()
        self.lock = None
        if config.threads:
            torch.set_num_threads(config.threads)
        self.out = check_run_directory(config)
        existing = checkpoint_dirs(self.out)
        if existing and not config.resume:
            raise StatexError(f"{self.out} already holds checkpoints of a run (latest {existing[-1].name}); pass "
                              "--resume to continue it or choose another --out")
        if config.resume and existing:
            previous = read_run_config(self.out)
            if previous is not None:
                check_resumable(config, previous, env.world)
        self.tokenizer = load_tokenizer(config.tokenizer)
        model_config = check_request(config, self.tokenizer, existing, env.device)
        created = not self.out.exists()
        if env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.out, "statex train").acquire()
        try:
            self._set_up(model_config, existing)
        except BaseException:
            # a run that fails before its first step leaves nothing behind: the directory it created goes
            if env.main:
                self.lock.release()
                if created:
                    shutil.rmtree(self.out, ignore_errors=True)
            raise

    def _set_up(self, model_config, existing) -> None:
        config, env = self.config, self.env
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        prewarm = self._start_kernels(model_config) if env.device.type == "cuda" else None

        self.stream = self._build_stream()
        loaded = load_latest_checkpoint(self.out) if config.resume else None
        if config.resume and loaded is None and env.main:
            warnings.warn(f"--resume: {self.out} has no checkpoint yet; starting a fresh run", stacklevel=2)
        self.model, state = self._build_model(loaded)
        if env.main and config.progress:
            print(f"model: {sum(p.numel() for p in self.model.parameters()) / 1e6:.1f}M parameters on "
                  f"{env.device}, {config.precision}", flush=True)
        if env.device.type == "cuda":
            self._finish_kernels(prewarm)
        self.wrapped = distributed.wrap(self.model, env, config.fsdp)
        self.optimizer = torch.optim.AdamW(build_param_groups(self.model, config.weight_decay), lr=config.lr,
                                           betas=(config.beta1, config.beta2), eps=config.eps)
        self.step, self.position, self.tokens = 0, 0, 0
        self.seconds = 0.0  # the run's time over all its invocations (_clock)
        self.sequences_per_step = env.world * config.batch_size * config.grad_accum
        self.passing = StatePassing(config.state_passing, config.seed)
        if state is not None:
            self._load_optimizer_state(state["optimizer"])
            set_rng_state(state["rng"])
            self.step, self.position = state["step"], state["data_position"]
            # checkpoints written before mixed lengths existed: every step had seq_len tokens per sequence
            self.tokens = state.get("tokens", self.step * self.sequences_per_step * config.seq_len)
            self.seconds = state.get("seconds", 0.0)
            self.passing.load(state.get("carried_state"), self.model, env.device)
            if env.main:
                print(f"resumed from {loaded[2]} at step {self.step}")
        self.metrics_path = self.out / "metrics.jsonl"
        if env.main:
            trim_metrics(self.metrics_path, self.step)
            write_atomic(self.out / RUN_CONFIG, json.dumps({**config.to_dict(), "world_size": env.world}, indent=2)
                         + "\n")
        self.writer = None
        if config.tensorboard and env.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise StatexError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    # ---- setup -------------------------------------------------------------------------------------------------

    def _build_stream(self) -> TrainStream:
        config, env = self.config, self.env
        packed = None
        if config.data is not None:
            cache_dir = config.cache_dir or self.out / "token-cache"
            if env.main:
                build_token_cache(config.data, self.tokenizer, cache_dir, config.text_field,
                                  show_progress=config.progress)
            env.barrier()
            path = build_token_cache(config.data, self.tokenizer, cache_dir, config.text_field, show_progress=False)
            packed = load_packed(path, config.seq_len, config.heldout_sequences)
        return TrainStream(packed, config.seq_len, config.seed, self.tokenizer, parse_synthetic(config.synthetic),
                           config.text_weight, config.text_loss_weight)

    def _build_model(self, loaded):
        from statex.expand import expand
        from statex.io import load_config, load_model
        from statex.models import build_model

        config = self.config
        state = None
        if loaded is not None:
            model, state, _ = loaded
        elif config.model is not None:
            model = load_model(config.model)
        else:
            model_config, _ = load_config(config.init)
            model = build_model(model_config, seed=config.seed)
        if loaded is None and config.expand_layers is not None:
            model = expand(model, config.expand_layers, mode=config.mode, heads=config.heads, factor=config.factor,
                           seed=config.seed if config.expand_seed is None else config.expand_seed,
                           keep_attn_norm=config.keep_attn_norm, keep_ssm_params=config.keep_ssm_params,
                           dt_init=config.dt_init)
        model = model.to(torch.bfloat16 if config.precision == "pure-bf16" else torch.float32)
        model.gradient_checkpointing = config.grad_checkpoint
        return model.to(self.env.device).train(), state

    def _start_kernels(self, model_config):
        """Start compiling this run's Triton kernels in parallel (runtime/prewarm.py) while the data and the model are
        built; only the first process of each host does, the others find them in the shared cache."""
        from statex.runtime import prewarm

        config = self.config
        if self.env.local_rank != 0:
            return None
        work = prewarm.Workload(model_config.to_dict(), config.batch_size, config.seq_len, train=True,
                                forward=config.heldout_sequences > 0 or config.probe_sequences > 0,
                                precision=config.precision)
        return prewarm.begin(work, config.autotune, progress=config.progress)

    def _finish_kernels(self, handle) -> None:
        from statex.runtime import autotune

        if handle is not None:
            handle.wait()
        self.env.barrier()
        if self.env.local_rank != 0:
            autotune.configure(self.config.autotune)

    # ---- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config, env = self.config, self.env
        self.signals.install()
        bar = tqdm(total=config.steps, initial=self.step, desc="train", unit="step",
                   disable=not (env.main and config.progress), dynamic_ncols=True)
        window_start, window_tokens = time.perf_counter(), 0
        skipped, last_loss, heldout = 0, float("nan"), None
        first_step = self.step + 1
        self._clock_mark = time.perf_counter()
        try:
            while self.step < config.steps:
                loss, grad_norm, lr, step_tokens = self._train_step()
                self.position += self.sequences_per_step
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    message = (f"non-finite loss or gradient at step {self.step + 1} (loss {loss}, grad norm "
                               f"{grad_norm})")
                    if config.on_nonfinite == "stop":
                        raise TrainingStopped(message + "; lower --lr, use --precision fp32, or pass "
                                                        "--on-nonfinite skip")
                    if skipped > config.max_skips:
                        raise TrainingStopped(f"{message}: {skipped} steps in a row skipped, stopping")
                    warnings.warn(message + ": step skipped", stacklevel=1)
                    self.step += 1
                    continue
                skipped = 0
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                last_loss = loss
                window_tokens += step_tokens
                self.tokens += step_tokens
                bar.update(1)
                last = self.step == config.steps
                first = self.step == first_step  # its time includes compilation: shown on its own
                if self.step % config.log_every == 0 or last or first:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                              "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                              "tokens": self.tokens, "time": round(time.time(), 3)}
                    if env.device.type == "cuda":  # the largest of any rank since the start (every rank joins)
                        peak = torch.cuda.max_memory_allocated(env.device) / 2**30
                        record["peak_memory_gib"] = round(env.maximum(peak), 3)
                    self._log(record)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                    window_start, window_tokens = time.perf_counter(), 0
                eval_every = config.eval_every or config.save_every
                if self.step % eval_every == 0 or last:
                    heldout = self.heldout_loss()
                    if heldout is not None:
                        self._log({"step": self.step, "heldout_loss": heldout,
                                   "heldout_ppl": math.exp(min(heldout, 50.0))})
                    probes = self.source_probes()
                    if probes:
                        self._log({"step": self.step, "probes": probes})
                if self.step % config.save_every == 0 or last:
                    self.save()
                saved = self.step % config.save_every == 0 or last
                if env.any(self.signals.number is not None):
                    number = self.signals.number or signal.SIGTERM
                    if not saved:
                        self.save()
                    raise TrainingInterrupted(f"{signal.Signals(number).name} received: checkpoint of step "
                                              f"{self.step} written to {self.out / 'checkpoints'}; continue with "
                                              "--resume", 128 + int(number))
                if config.stop_at_step is not None and self.step >= config.stop_at_step and not last:
                    if not saved:
                        self.save()
                    if env.main:
                        print(f"stopped at step {self.step} (--stop-at-step); continue with --resume")
                    return {"out": str(self.out), "steps": self.step, "final_loss": last_loss,
                            "heldout_loss": heldout, "stopped": True, "rank": env.rank}
        finally:
            bar.close()
            self.signals.restore()
            if self.writer is not None:
                self.writer.close()
        final = self._unwrapped_for_save()  # a collective under FSDP: every rank takes part
        if env.main:
            final.save_pretrained(self.out / "final")
        env.barrier()
        return {"out": str(self.out), "steps": self.step, "final_loss": last_loss, "heldout_loss": heldout,
                "final_model": str(self.out / "final"), "stopped": False, "rank": env.rank}

    def _autocast(self):
        if self.config.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=torch.bfloat16)

    def _train_step(self) -> tuple[float, float, float, int]:
        config, env = self.config, self.env
        lr = learning_rate(self.step, config.steps, config.lr, config.min_lr, config.warmup, config.schedule,
                           config.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total, tokens = 0.0, 0
        for micro in range(config.grad_accum):
            start = self.position + (micro * env.world + env.rank) * config.batch_size
            ids, labels, weights = self.stream.weighted_batch(start, config.batch_size, key=self.position)
            plain = bool((weights == 1).all())  # on the CPU copy: no device sync per micro-batch
            ids, labels, weights = ids.to(env.device), labels.to(env.device), weights.to(env.device)
            tokens += ids.numel() * env.world  # every process of a step draws the same length
            initial = self.passing.initial(self.position, micro, ids.shape[0])
            last_micro = micro == config.grad_accum - 1
            no_sync = getattr(self.wrapped, "no_sync", None)
            sync_context = no_sync() if (no_sync is not None and not last_micro) else contextlib.nullcontext()
            with sync_context:
                with self._autocast():
                    loss, final = self._loss(ids, labels, None if plain else weights, initial)
                (loss / config.grad_accum).backward()
            self.passing.keep(final)
            total += float(loss.detach()) / config.grad_accum
        loss_mean = env.mean(total)
        max_norm = config.clip if config.clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        return loss_mean, norm, lr, tokens

    def _loss(self, ids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, initial=None):
        """(the loss of train/loss.py, the final state when state passing is on); ``weights`` None: all 1."""
        if self.config.loss_average == "tokens" and weights is None and not self.passing.enabled:
            return self.wrapped(ids, labels=labels).loss, None
        out = self.wrapped(ids, state=initial, use_cache=self.passing.enabled)
        return weighted_loss(out.logits, labels, weights, self.config.loss_average), out.state

    def _forward_logits(self, ids: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.wrapped(ids).logits

    def heldout_loss(self) -> float | None:
        """Mean next-token loss over the held-out sequences (train/heldout.py)."""
        config = self.config
        return heldout.heldout_loss(self.model, self._forward_logits, self.stream, config.heldout_sequences,
                                    config.seq_len, config.seed, config.batch_size, self.env)

    def source_probes(self) -> dict[str, dict[str, Any]]:
        """Loss and exact-answer accuracy per synthetic source on fresh sequences (train/heldout.py)."""
        config = self.config
        return heldout.source_probes(self.model, self._forward_logits, self.stream, config.probe_sequences,
                                     config.seq_len, config.seed, config.batch_size, self.env)

    # ---- bookkeeping -------------------------------------------------------------------------------------------

    def _clock(self) -> float:
        """Seconds this run has spent up to now, earlier invocations included (steps redone after a resume
        counted once)."""
        now = time.perf_counter()
        self.seconds, self._clock_mark = self.seconds + now - self._clock_mark, now
        return self.seconds

    def _log(self, record: dict[str, Any]) -> None:
        record = {**record, "seconds": round(self._clock(), 3)}
        if not self.env.main:
            return
        with self.metrics_path.open("a") as handle:
            handle.write(dumps_strict(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            for label, values in record.get("probes", {}).items():
                for name in ("loss", "accuracy"):
                    self.writer.add_scalar(f"probe/{label}/{name}", values[name], record["step"])

    def _unwrapped_for_save(self):
        if not self.config.fsdp or not self.env.enabled:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from statex.models import build_model

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        copy = build_model(self.model.config, device="meta")
        copy.load_state_dict(full, assign=True, strict=False)
        copy.tie_weights()
        return copy

    def _optimizer_state(self) -> dict[str, Any]:
        return optim_state.for_checkpoint(self.model, self.optimizer, sharded=self.config.fsdp and self.env.enabled)

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        optim_state.load(self.model, self.optimizer, state, sharded=self.config.fsdp and self.env.enabled)

    def save(self) -> None:
        model = self._unwrapped_for_save()
        optimizer = self._optimizer_state()
        if self.env.main:
            state = {"step": self.step, "data_position": self.position, "tokens": self.tokens,
                     "seconds": self._clock(), "optimizer": optimizer, "rng": rng_state(), "config": self.config.to_dict(), "world_size": self.env.world,
                     "carried_state": self.passing.state_dict()}
            save_checkpoint(self.out, self.step, model, state, self.config.keep)
        self.env.barrier()
