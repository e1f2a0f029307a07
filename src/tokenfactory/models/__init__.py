"""Models: the Llama-family network, its loaders, tokenizer and chat template."""
