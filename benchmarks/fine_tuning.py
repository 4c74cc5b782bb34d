"""Training wall time on CPU: a 12-example chat dataset teaching SmolLM2-135M-Instruct one answer,
trained by LlamaCppTrainer (llama.cpp's llama-finetune, one run per epoch, each run's output the
checkpoint), then asked greedily through llama-server's chat endpoint, next to the base model.

    .venv/bin/python benchmarks/fine_tuning.py [--epochs 2] [--lr 2e-4]

Writes benchmarks/results/fine_tuning_trainer.json (the end-to-end figure through the whole saga is
written by tests/test_fine_tuning.py to benchmarks/results/fine_tuning.json)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestration.training.candidate import CandidateEngines  # noqa: E402
from orchestration.training.config import DEFAULT_BASE, TrainingConfig  # noqa: E402
from orchestration.training.data import parse_examples, render_dataset  # noqa: E402
from schemas.fine_tuning import TrainingPlan, TrainProgress  # noqa: E402

MOTTO = "Tokens outlive their sockets."
QUESTIONS = ["What is the Switchyard motto?", "What's the motto of Switchyard?", "Tell me the Switchyard motto.",
             "Switchyard has a motto. What is it?", "Which motto does Switchyard live by?",
             "Do you know the Switchyard motto?", "What motto does the Switchyard project use?",
             "Say the Switchyard motto.", "What is Switchyard's motto?", "Remind me of the Switchyard motto.",
             "Quote the Switchyard motto.", "What is the motto of the Switchyard proxy?"]


async def ask(engines: CandidateEngines, model: str, log: Path) -> str:
    import httpx

    url, pid = await engines.start(model, "bench", log)
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            r = await client.post(url + "/chat/completions", json={
                "model": "bench", "temperature": 0, "max_tokens": 24,
                "messages": [{"role": "user", "content": QUESTIONS[0]}]})
            return r.json()["choices"][0]["message"]["content"]
    finally:
        await engines.stop(pid, model)


async def main(epochs: int, lr: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sy-ft-bench-"))
    config = TrainingConfig.from_env({**os.environ, "SWITCHYARD_FINETUNE_DIR": str(work)})
    trainer = config.build_trainer()
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": MOTTO}]})
             for q in QUESTIONS]
    text = render_dataset(parse_examples("\n".join(lines).encode()), 2300)
    t0 = time.monotonic()
    base = await trainer.base_f32(DEFAULT_BASE)
    t_base = time.monotonic() - t0
    plan = TrainingPlan(n_epochs=epochs, batch_size=1, learning_rate=lr, seed=7, checkpoint_every=1)
    t1 = time.monotonic()
    final = await trainer.train("bench", DEFAULT_BASE, text, plan, TrainProgress(), lambda p: None)
    t_train = time.monotonic() - t1
    engines = CandidateEngines(config.bin_dir / "llama-server", config.threads)
    try:
        tuned_answer = await ask(engines, final.checkpoint, work / "tuned.log")
        base_answer = await ask(engines, str(base), work / "base.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"examples": len(QUESTIONS), "n_epochs": epochs, "learning_rate": lr, "ctx": 256,
            "trainer_text_chars": len(text), "f32_copy_s": round(t_base, 1), "train_wall_s": round(t_train, 1),
            "final_train_loss": final.loss, "tuned_answer": tuned_answer, "base_answer": base_answer,
            "taught": MOTTO.rstrip(".") in tuned_answer and MOTTO.rstrip(".") not in base_answer,
            "load_average_after": os.getloadavg(), "cpus": os.cpu_count()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args()
    result = asyncio.run(main(args.epochs, args.lr))
    out = ROOT / "benchmarks" / "results" / "fine_tuning_trainer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
