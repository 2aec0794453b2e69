"""Load any LLaVA-family checkpoint, prompt templates, batching of (prompt, answer, image) samples, LoRA targets."""
