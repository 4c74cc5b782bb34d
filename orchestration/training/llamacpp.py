"""Trainer `LlamaCppTrainer`: drives llama.cpp's `llama-finetune` (we drive a trainer, never write one).

llama-finetune trains a full F32 model on a plain text file and writes the model at the end; it
cannot save or load its optimizer state. So a job trains as a chain of short runs of
`checkpoint_every` epochs, each starting from the previous run's output GGUF: that file is the
checkpoint. A resumed job starts from the last complete checkpoint with the weights it had, and a
fresh AdamW state (its moments restart, as they do at every run of the chain anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from orchestration.training.protocols import Heartbeat
from schemas.fine_tuning import TrainingPlan, TrainProgress

_CKPT = re.compile(r"^ckpt-epoch-(\d+)\.gguf$")
_LOSS = re.compile(r"train: .*?loss=([0-9.]+)")
HEARTBEAT_EVERY_S = 2.0
KEEP_CHECKPOINTS = 2


class TrainerError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the worker that started it dies (Linux), so a killed
    worker leaves no trainer burning the CPU its successor needs."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_DEATHSIG


async def run_tool(argv: list[str], log: Path, on_output=None, die_with_parent: bool = True) -> None:
    """Runs a llama.cpp tool to its end, its output appended to `log`; `on_output(text)` sees each
    piece. Cancelling kills it (its whole process group)."""
    with open(log, "ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None)
        try:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(4096):
                out.write(chunk)
                out.flush()
                if on_output is not None:
                    on_output(chunk.decode(errors="replace"))
            code = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            raise
    if code != 0:
        tail = log.read_bytes()[-600:].decode(errors="replace")
        raise TrainerError(f"{Path(argv[0]).name} exited with {code}: ...{tail}")


@dataclass
class LlamaCppTrainer:
    finetune_bin: Path
    quantize_bin: Path
    work_dir: Path  # a directory of its own per job: <work_dir>/<job id>/
    bases: dict[str, Path]  # trainable base models: catalog id -> its GGUF (any type)
    ctx: int = 256  # llama.cpp's smallest context; a ubatch of it all, so K and V get gradients too
    threads: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))

    def job_dir(self, job_id: str) -> Path:
        return self.work_dir / job_id

    async def base_f32(self, model: str) -> Path:
        """The base model in F32, which llama-finetune needs; made once per model by dequantizing
        the shipped GGUF with llama-quantize (exact: each weight is the value it is served with)."""
        source = self.bases.get(model)
        if source is None:
            raise TrainerError(f"the model {model!r} cannot be fine-tuned here")
        path = self.work_dir / "bases" / f"{model}-f32.gguf"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        await run_tool([str(self.quantize_bin), "--allow-requantize", str(source), str(partial), "F32"],
                       path.with_suffix(".log"))
        os.replace(partial, path)
        return path

    def checkpoints(self, job_id: str) -> list[tuple[int, Path]]:
        """The complete checkpoints on disk, oldest first (a run writes a partial file, renamed
        when the run has ended well)."""
        d = self.job_dir(job_id)
        found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT.match(p.name))] if d.exists() else []
        return sorted(found)

    async def train(self, job_id: str, base_model: str, text: bytes, plan: TrainingPlan,
                    progress: TrainProgress, heartbeat: Heartbeat) -> TrainProgress:
        d = self.job_dir(job_id)
        d.mkdir(parents=True, exist_ok=True)
        data = d / "train.txt"
        data.write_bytes(text)
        done = self.checkpoints(job_id)
        state = TrainProgress()
        if done:
            epochs, path = done[-1]
            state = TrainProgress(epochs_done=epochs, checkpoint=str(path), loss=progress.loss,
                                  resumed_from=epochs)
        current = [state]
        heartbeat(state)
        ticker = asyncio.ensure_future(_tick(lambda: heartbeat(current[0])))
        try:
            return await self._chain(job_id, base_model, data, plan, current, heartbeat)
        finally:
            ticker.cancel()

    async def _chain(self, job_id: str, base_model: str, data: Path, plan: TrainingPlan,
                     current: list[TrainProgress], heartbeat: Heartbeat) -> TrainProgress:
        state = current[0]
        d = data.parent
        start = Path(state.checkpoint) if state.checkpoint else await self.base_f32(base_model)
        while state.epochs_done < plan.n_epochs:
            k = min(plan.checkpoint_every, plan.n_epochs - state.epochs_done)
            target = state.epochs_done + k
            out = d / f"ckpt-epoch-{target}.gguf"
            partial = d / f".{out.name}.partial"
            await self._run(start, data, partial, k, plan, state, d / "trainer.log")
            os.replace(partial, out)
            state = msgspec.structs.replace(state, epochs_done=target, checkpoint=str(out))
            current[0] = state
            heartbeat(state)
            start = out
            for _, old in self.checkpoints(job_id)[:-KEEP_CHECKPOINTS]:
                old.unlink(missing_ok=True)
        return state

    async def _run(self, start: Path, data: Path, out: Path, epochs: int, plan: TrainingPlan,
                   state: TrainProgress, log: Path) -> None:
        argv = [str(self.finetune_bin), "-m", str(start), "-f", str(data), "-o", str(out),
                "-c", str(self.ctx), "-b", str(self.ctx), "-ub", str(self.ctx),
                "-epochs", str(epochs), "-lr", f"{plan.learning_rate:g}", "-opt", "adamw",
                "-val-split", "0", "-t", str(self.threads), "--seed", str(plan.seed), "-ngl", "0"]
        tail = [""]

        def seen(text: str) -> None:
            tail[0] = (tail[0] + text)[-2000:]  # a progress line may come in two pieces
            losses = _LOSS.findall(tail[0])
            if losses:
                state.loss = float(losses[-1])

        await run_tool(argv, log, seen)

    async def remove(self, job_id: str) -> None:
        await asyncio.to_thread(_rmtree, self.job_dir(job_id))


async def _tick(beat, every_s: float = HEARTBEAT_EVERY_S) -> None:
    """Heartbeats every few seconds all through training (the F32 copy, loading, each run), with
    the latest checkpoint and loss."""
    while True:
        await asyncio.sleep(every_s)
        beat()


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
