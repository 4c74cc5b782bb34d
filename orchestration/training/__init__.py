"""The fine-tuning saga's strategies: data sources, trainers, verifiers, the candidate engine."""
