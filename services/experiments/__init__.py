"""The experiments service: lab and research experiments, responses, sweeps and prompt templates."""
