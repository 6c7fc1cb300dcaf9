"""Running the demo's independent pieces (pretraining a base, one post-training run and its evaluation) side by
side on a CPU: worker processes with an equal share of the cores each (two PyTorch processes with default
threads on 2 cores run 10-30x slower than one thread each), every worker's output in its own log file, and one
progress line in the parent."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

Task = tuple[Callable[..., Any], tuple]


def default_jobs(n_tasks: int, jobs: int | None = None) -> int:
    cores = os.cpu_count() or 1
    return max(1, min(n_tasks, jobs if jobs is not None else cores))


def run_tasks(tasks: dict[str, Task], jobs: int | None = None, progress: bool = True, log_dir: Path | None = None,
              watch: dict[str, Path] | None = None, started: float | None = None) -> dict[str, Any]:
    """Run ``tasks`` (name -> (function, args)) and return name -> result, in the order given. With one job
    they run here, one after the other; otherwise in ``jobs`` spawned processes. ``watch``: name -> a run
    directory whose metrics.jsonl tells the task's current step (shown on the progress line)."""
    started = started or time.time()
    jobs = default_jobs(len(tasks), jobs)
    if jobs == 1:
        results = {}
        for name, (function, args) in tasks.items():
            _say(f"{name} ...", started, progress)
            try:
                results[name] = function(*args)
            except Exception as error:
                error.add_note(f"in piece {name}")
                raise
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log_dir = Path(log_dir or ".")
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in tasks:  # logs of an earlier run would read as started pieces
        (log_dir / f"{_file_name(name)}.log").unlink(missing_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    _say(f"{len(tasks)} pieces in {jobs} processes x {threads} thread(s); logs in {log_dir}/<piece>.log", started,
         progress)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_worker, function, args, threads, log_dir / f"{_file_name(name)}.log")
                   for name, (function, args) in tasks.items()}
        last, reported = "", set()
        while True:
            for name, future in futures.items():
                if future.done() and name not in reported:
                    reported.add(name)
                    error = future.exception()
                    if error is not None:
                        for other in futures.values():
                            other.cancel()
                        error.add_note(f"in piece {name} (log: {log_dir / (_file_name(name) + '.log')})")
                        raise error
                    _say(f"finished {name} ({len(reported)}/{len(futures)})", started, progress)
            if len(reported) == len(futures):
                break
            # a worker creates its log when it starts the piece (the pool marks queued pieces running too)
            running = [name for name, f in futures.items() if not f.done()
                       and (log_dir / f"{_file_name(name)}.log").exists()]
            line = " | ".join(_progress_of(name, (watch or {}).get(name)) for name in running)
            if progress and line and line != last:
                print(f"  {(time.time() - started) / 60:4.1f} min  {line}", flush=True)
                last = line
            time.sleep(2)
        return {name: future.result() for name, future in futures.items()}


def _worker(function, args, threads: int, log: Path):
    torch.set_num_threads(threads)
    with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        return function(*args)


def _file_name(name: str) -> str:
    from statex.files import safe_file_name

    return safe_file_name(name)


def _progress_of(name: str, run: Path | None) -> str:
    """'gla/lpt/seed0 step 120/300 loss 0.412' from the run's metrics.jsonl, when it has one yet."""
    if run is None:
        return name
    try:
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
        config = json.loads((Path(run) / "train_config.json").read_text())
        last = next(row for row in map(json.loads, reversed(lines)) if "loss" in row)
        return f"{name} step {last['step']}/{config['steps']} loss {last['loss']:.3f}"
    except (OSError, StopIteration, ValueError, KeyError):
        return name


def _say(message: str, started: float, progress: bool) -> None:
    if progress:
        print(f"== {message} ({(time.time() - started) / 60:.1f} min)", flush=True)
