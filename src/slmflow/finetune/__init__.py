"""Fine-tuning per agent: datasets, LoRA training, the adapter registry, GGUF export."""
