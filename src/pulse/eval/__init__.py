"""Evaluation: MLLMU-Bench MCQ prompts and parsing (`prompts`), MMBench prompt, extraction and CircularEval
(`mmbench`). These modules are model-free; the code that runs models calls them."""
