"""Text: GPT-2's vocabulary files, the compiled pre-tokenizer and BPE, and `Tokenizer`. Directories in, ids out:
turning a model name into a directory is gpt2cy.hub's job (hub.get_tokenizer)."""
